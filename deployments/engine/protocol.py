"""The engine an `EngineDeployment` replica serves, as the deployment sees it.

`VLLMEngine` is the one capserve runs; the deployment takes the class to build as `engine_cls`
(as Ray Serve LLM's `LLMServer(engine_cls=...)` does), so unit tests serve a fake engine through
the real deployment class without Ray or vLLM. No Ray and no vLLM here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from capabilities.engine import ChoiceResult
from capabilities.priority import Priority
from deployments.config import ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, Rejection

TokenCounter = Callable[[int, int], None]
"""Told each finished request's prompt and generated token counts."""


class ServedEngine(Protocol):
    """Every method takes many inputs and runs them concurrently, as requests of one `priority`;
    one input's fault is raised (or, for chat, returned as a `Rejection`) for the deployment to
    answer its caller with."""

    identity: str
    """What the engine's outputs depend on: the key of the caches (`engine/identity.py`)."""

    async def embed(self, texts: Sequence[str], priority: Priority = ...) -> np.ndarray: ...

    async def embeddings(self, texts: Sequence[str], priority: Priority = ...) -> Embeddings: ...

    async def classify(self, texts: Sequence[str], priority: Priority = ...) -> np.ndarray: ...

    async def class_labels(self) -> list[str]: ...

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None: ...

    async def choose(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        keys: Sequence[str] | None = None,
        priority: Priority = ...,
    ) -> list[ChoiceResult]: ...

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any], priority: Priority = ...
    ) -> list[dict[str, Any]]: ...

    async def chat(
        self, calls: Sequence[ChatCall], priority: Priority = ...
    ) -> list[ChatOutput | Rejection]: ...

    async def check_health(self) -> None:
        """Raises when the engine can no longer answer."""
        ...

    async def ready(self) -> None:
        """Answers one real request of the kind the model serves."""
        ...

    def shutdown(self) -> None: ...


EngineClass = Callable[[ModelConfig, TokenCounter], ServedEngine]
"""What builds a replica's engine from its model's config and the replica's token counter."""
