"""The engine protocol over a Serve `DeploymentHandle`, so capability logic never sees Ray.

Every call ends: within the engine's call timeout, or at once while its circuit breaker is open,
with `EngineUnavailableError` (a 503 with Retry-After) when the engine is overloaded or down.
Every call carries the priority of the work that makes it (`capabilities.priority`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle

from capabilities.embedding_memo import EmbeddingMemo
from capabilities.engine import ChoiceResult
from capabilities.errors import EngineUnavailableError
from capabilities.priority import current_priority
from deployments.calls.guarded_handle import GuardedHandle
from deployments.config import AppConfig, CallGuardConfig, ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, Rejection


class EngineClient:
    """Forwards protocol calls to an engine deployment; replies are coalesced there. Texts this
    process embedded last are answered from its `EmbeddingMemo` without a call."""

    def __init__(
        self, name: str, identity: str, handle: DeploymentHandle, calls: CallGuardConfig
    ) -> None:
        self.name = name
        self.identity = identity
        self._engine = GuardedHandle(f"engine {name!r}", handle, calls, EngineUnavailableError)
        self._memo = EmbeddingMemo()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._memo.embed(texts, self._embed)

    async def _embed(self, texts: list[str]) -> np.ndarray:
        return await self._engine.call("embed", texts, current_priority())

    async def class_labels(self) -> list[str]:
        return await self._engine.call("class_labels", current_priority())

    async def classify(self, texts: Sequence[str]) -> np.ndarray:
        return await self._engine.call("classify", list(texts), current_priority())

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None:
        return await self._engine.call("choice_keys", list(choices), cue, current_priority())

    async def choose(
        self, prompts: Sequence[str], choices: Sequence[str], keys: Sequence[str] | None = None
    ) -> list[ChoiceResult]:
        keys = None if keys is None else list(keys)
        return await self._engine.call(
            "choose", list(prompts), list(choices), keys, current_priority()
        )

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        return await self._engine.call(
            "generate_json", list(prompts), json_schema, current_priority()
        )

    async def chat(self, call: ChatCall) -> ChatOutput | Rejection:
        return await self._engine.call("chat", call, current_priority())

    async def embeddings(self, texts: Sequence[str]) -> Embeddings:
        return await self._engine.call("embeddings", list(texts), current_priority())

    async def ready(self) -> None:
        """Returns when the engine answers a real request; raises when it cannot."""
        await self._engine.check("ready")


def engine_client(model: ModelConfig, handle: DeploymentHandle) -> EngineClient:
    """The client of `model`'s engine, guarded as its `deployment.calls` says."""
    return EngineClient(model.name, model.identity, handle, model.deployment.calls)


def engine_clients(
    config: AppConfig, handles: Mapping[str, DeploymentHandle]
) -> dict[str, EngineClient]:
    return {name: engine_client(config.model(name), handle) for name, handle in handles.items()}
