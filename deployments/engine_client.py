"""The engine protocol over a Serve `DeploymentHandle`, so capability logic never sees Ray."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.serve.handle import DeploymentHandle

from capabilities.engine import ChoiceResult
from deployments.engine_calls import ChatCall, ChatOutput, Embeddings, Rejection


class EngineClient:
    """Forwards protocol calls to an engine deployment; replies are coalesced there."""

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self._handle = handle

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._handle.embed.remote(list(texts))

    async def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[ChoiceResult]:
        return await self._handle.choose.remote(list(prompts), list(choices))

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        return await self._handle.generate_json.remote(list(prompts), json_schema)

    async def chat(self, call: ChatCall) -> ChatOutput | Rejection:
        return await self._handle.chat.remote(call)

    async def embeddings(self, texts: Sequence[str]) -> Embeddings:
        return await self._handle.embeddings.remote(list(texts))

    async def ready(self) -> None:
        """Returns when the engine answers a real request; raises when it cannot."""
        await self._handle.ready.remote()
