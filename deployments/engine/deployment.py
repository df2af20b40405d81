"""The engine deployment: each replica holds one vLLM `AsyncLLM` and coalesces calls.

Every public entry point hands its call to a `@serve.batch` method: concurrent calls from any
number of callers arrive as one list, run concurrently inside the engine (which batches
continuously), and answer each caller with its own result or its own error. Each call is
counted (Prometheus and the replica's report to /v1/stats) from when it enters the replica until
it is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.engine import ChoiceResult
from deployments.calls.guarded_handle import GuardedCallee
from deployments.config import ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, Rejection
from deployments.engine.protocol import EngineClass
from deployments.engine.vllm_engine import VLLMEngine
from deployments.telemetry import metrics
from deployments.telemetry.replica_telemetry import CallCounter, ReplicaReporter

Result = TypeVar("Result")
# vLLM batches continuously inside; a few batches in flight keep it fed while others tokenize.
CONCURRENT_BATCHES = 4


async def per_call(
    run: Callable[..., Awaitable[Result]], *arguments: Sequence[Any]
) -> list[Result | Exception]:
    """Runs each coalesced call concurrently (the engine batches them continuously) and gives
    each its own outcome: one caller's over-long prompt or undecodable output is that caller's
    error alone, never its batch's."""
    outcomes = await asyncio.gather(
        *(run(*call) for call in zip(*arguments, strict=True)), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # cancellation ends the whole batch
    return outcomes


def answer(outcome: Result | Exception) -> Result:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@serve.deployment
class EngineDeployment(GuardedCallee):
    async def __init__(
        self, config: ModelConfig, stats: DeploymentHandle, *, engine_cls: EngineClass = VLLMEngine
    ) -> None:
        """`engine_cls` builds the replica's engine, as Ray Serve LLM's `LLMServer` takes it:
        vLLM's unless a unit test serves a fake through this class."""
        self._config = config
        self._model_tags = {"model": config.name}
        self._engine = engine_cls(config, self._count_tokens)
        batches = (self._embed, self._choose, self._generate_json, self._chat, self._embeddings)
        for entry in batches:
            entry.set_max_batch_size(config.batching.max_batch_size)
            entry.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        self._calls = CallCounter()
        self._reporting = ReplicaReporter(stats, self._calls, model=config.name).start()

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self._served("embed", self._embed(texts))

    async def embeddings(self, texts: list[str]) -> Embeddings:
        return await self._served("embeddings", self._embeddings(texts))

    async def choice_keys(self, choices: list[str], cue: str) -> list[str] | None:
        return await self._served("choice_keys", self._engine.choice_keys(choices, cue))

    async def choose(
        self, prompts: list[str], choices: list[str], keys: list[str] | None = None
    ) -> list[ChoiceResult]:
        return await self._served("choose", self._choose(prompts, choices, keys))

    async def generate_json(
        self, prompts: list[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        return await self._served("generate_json", self._generate_json(prompts, json_schema))

    async def chat(self, call: ChatCall) -> ChatOutput | Rejection:
        return await self._served("chat", self._chat(call))

    async def _served(self, method: str, call: Awaitable[Result | Exception]) -> Result:
        self._calls.started()
        self._set_queue_depth()
        try:
            return answer(await call)
        finally:
            self._calls.finished()
            self._set_queue_depth()
            metrics.count(metrics.ENGINE_REQUESTS, 1, {**self._model_tags, "method": method})

    def _set_queue_depth(self) -> None:
        metrics.set_gauge(metrics.ENGINE_QUEUE_DEPTH, self._calls.in_flight, self._model_tags)

    def _batch_formed(self, method: str, calls: int) -> None:
        tags = {**self._model_tags, "method": method}
        metrics.observe(metrics.ENGINE_BATCH_SIZE, calls, tags)

    def _count_tokens(self, prompt: int, generation: int) -> None:
        metrics.record_engine_tokens(self._config.name, prompt, generation)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _embed(self, calls: list[list[str]]) -> list[np.ndarray | Exception]:
        self._batch_formed("embed", len(calls))
        return await per_call(self._engine.embed, calls)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _embeddings(self, calls: list[list[str]]) -> list[Embeddings | Exception]:
        self._batch_formed("embeddings", len(calls))
        return await per_call(self._engine.embeddings, calls)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _choose(
        self, prompts: list[list[str]], choices: list[list[str]], keys: list[list[str] | None]
    ) -> list[list[ChoiceResult] | Exception]:
        self._batch_formed("choose", len(prompts))
        return await per_call(self._engine.choose, prompts, choices, keys)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _generate_json(
        self, prompts: list[list[str]], json_schemas: list[dict[str, Any]]
    ) -> list[list[dict[str, Any]] | Exception]:
        self._batch_formed("generate_json", len(prompts))
        return await per_call(self._engine.generate_json, prompts, json_schemas)

    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _chat(self, calls: list[ChatCall]) -> list[ChatOutput | Rejection | Exception]:
        self._batch_formed("chat", len(calls))
        return await per_call(self._chat_one, calls)

    async def _chat_one(self, call: ChatCall) -> ChatOutput | Rejection:
        [output] = await self._engine.chat([call])
        return output

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
