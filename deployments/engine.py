"""The engine deployment: each replica holds one vLLM `AsyncLLM` and coalesces calls.

Every public method is a `@serve.batch` entry point: concurrent calls from any number of callers
arrive as one list, run concurrently inside the engine (which batches continuously), and answer
each caller with its own slice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from ray import serve

from capabilities.engine import ChoiceResult
from deployments.config import ModelConfig
from deployments.engine_calls import ChatCall, ChatOutput, Embeddings, Rejection
from deployments.vllm_engine import VLLMEngine

Result = TypeVar("Result")
# vLLM batches continuously inside; a few batches in flight keep it fed while others tokenize.
CONCURRENT_BATCHES = 4


async def _per_call(
    run: Callable[..., Awaitable[Result]], *arguments: Sequence[Any]
) -> list[Result]:
    return list(await asyncio.gather(*(run(*call) for call in zip(*arguments, strict=True))))


@serve.deployment
class EngineDeployment:
    async def __init__(self, config: ModelConfig) -> None:
        self._engine = VLLMEngine(config)
        self._config = config
        for entry in (self.embed, self.choose, self.generate_json, self.chat, self.embeddings):
            entry.set_max_batch_size(config.batching.max_batch_size)
            entry.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)

    async def _embedded(self, calls: list[list[str]]) -> list[Embeddings]:
        # One engine call for all texts of all callers, then split back per caller.
        embedded = await self._engine.embeddings([text for texts in calls for text in texts])
        return embedded.split([len(texts) for texts in calls])

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def embed(self, calls: list[list[str]]) -> list[np.ndarray]:
        return [part.vectors for part in await self._embedded(calls)]

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def embeddings(self, calls: list[list[str]]) -> list[Embeddings]:
        return await self._embedded(calls)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def choose(
        self, prompts: list[list[str]], choices: list[list[str]]
    ) -> list[list[ChoiceResult]]:
        return await _per_call(self._engine.choose, prompts, choices)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def generate_json(
        self, prompts: list[list[str]], json_schemas: list[dict[str, Any]]
    ) -> list[list[dict[str, Any]]]:
        return await _per_call(self._engine.generate_json, prompts, json_schemas)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def chat(self, calls: list[ChatCall]) -> list[ChatOutput | Rejection]:
        return await self._engine.chat(calls)

    async def ready(self) -> None:
        """A real request through the engine: readiness means answering, not just loaded."""
        await self._engine.check_health()
        if self._config.runner == "pooling":
            await self._engine.embed(["ready"])
        else:
            await self._engine.choose(["ready?"], ["yes", "no"])

    async def check_health(self) -> None:
        # Serve calls this periodically; raising marks the replica unhealthy and replaces it.
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
