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
from deployments.config import ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, Rejection

TokenCounter = Callable[[int, int], None]
"""Told each finished request's prompt and generated token counts."""


class ServedEngine(Protocol):
    """Every method takes many inputs and runs them concurrently; one input's fault is raised
    (or, for chat, returned as a `Rejection`) for the deployment to answer its caller with."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embeddings(self, texts: Sequence[str]) -> Embeddings: ...

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None: ...

    async def choose(
        self, prompts: Sequence[str], choices: Sequence[str], keys: Sequence[str] | None = None
    ) -> list[ChoiceResult]: ...

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]: ...

    async def chat(self, calls: Sequence[ChatCall]) -> list[ChatOutput | Rejection]: ...

    async def check_health(self) -> None:
        """Raises when the engine can no longer answer."""
        ...

    def shutdown(self) -> None: ...


EngineClass = Callable[[ModelConfig, TokenCounter], ServedEngine]
"""What builds a replica's engine from its model's config and the replica's token counter."""
