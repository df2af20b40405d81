"""The engine deployment: each replica holds one vLLM `AsyncLLM` and coalesces calls.

Every public entry point hands its call, with its priority, to a `@serve.batch` queue of that
method and priority (`deployments.coalescing`): concurrent calls from any number of callers arrive
as one list, run concurrently inside the engine (which batches continuously, requests of every
priority together, ordered by vLLM's priority scheduling), and answer each caller with its own
result or its own error. Each call is counted (Prometheus and the replica's report to /v1/stats)
from when it enters the replica until it is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.engine import ChoiceResult
from capabilities.priority import Priority
from deployments.calls.guarded_handle import GuardedCallee
from deployments.coalescing import PriorityBatches
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
    return cast(list[Result | Exception], outcomes)


def answer(outcome: Result | Exception) -> Result:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@serve.deployment
class EngineDeployment(GuardedCallee):
    # Serve awaits an async constructor; Python's typing knows of no such thing.
    async def __init__(  # type: ignore[misc]
        self, config: ModelConfig, stats: DeploymentHandle, *, engine_cls: EngineClass = VLLMEngine
    ) -> None:
        """`engine_cls` builds the replica's engine, as Ray Serve LLM's `LLMServer` takes it:
        vLLM's unless a unit test serves a fake through this class."""
        self._config = config
        self._model_tags = {"model": config.name}
        self._engine = engine_cls(config, self._count_tokens)
        runs: dict[str, Callable[..., Awaitable[Any]]] = {
            "embed": self._engine.embed,
            "embeddings": self._engine.embeddings,
            "classify": self._engine.classify,
            "choose": self._engine.choose,
            "generate_json": self._engine.generate_json,
            "chat": self._chat_one,
        }
        self._batches = {
            method: PriorityBatches(
                self._coalesced(method, run), config.batching, CONCURRENT_BATCHES
            )
            for method, run in runs.items()
        }
        self._calls = CallCounter()
        self._reporting = ReplicaReporter(stats, self._calls, model=config.name).start()

    async def embed(self, texts: list[str], priority: Priority) -> np.ndarray:
        return await self._served("embed", priority, texts)

    async def embeddings(self, texts: list[str], priority: Priority) -> Embeddings:
        return await self._served("embeddings", priority, texts)

    async def classify(self, texts: list[str], priority: Priority) -> np.ndarray:
        return await self._served("classify", priority, texts)

    async def class_labels(self, priority: Priority) -> list[str]:
        return await self._counted("class_labels", priority, self._engine.class_labels())

    async def choice_keys(
        self, choices: list[str], cue: str, priority: Priority
    ) -> list[str] | None:
        return await self._counted("choice_keys", priority, self._engine.choice_keys(choices, cue))

    async def choose(
        self, prompts: list[str], choices: list[str], keys: list[str] | None, priority: Priority
    ) -> list[ChoiceResult]:
        return await self._served("choose", priority, prompts, choices, keys)

    async def generate_json(
        self, prompts: list[str], json_schema: dict[str, Any], priority: Priority
    ) -> list[dict[str, Any]]:
        return await self._served("generate_json", priority, prompts, json_schema)

    async def chat(self, call: ChatCall, priority: Priority) -> ChatOutput | Rejection:
        return await self._served("chat", priority, call)

    async def _served(self, method: str, priority: Priority, *arguments: Any) -> Any:
        """One call, coalesced with the calls of its method and priority."""
        call = self._batches[method].submit(priority, (*arguments, priority))
        return await self._counted(method, priority, call)

    async def _counted(
        self, method: str, priority: Priority, call: Awaitable[Result | Exception]
    ) -> Result:
        self._calls.started()
        self._set_queue_depth()
        try:
            return answer(await call)
        finally:
            self._calls.finished()
            self._set_queue_depth()
            tags = {**self._model_tags, "method": method, "priority": priority}
            metrics.count(metrics.ENGINE_REQUESTS, 1, tags)

    def _set_queue_depth(self) -> None:
        metrics.set_gauge(metrics.ENGINE_QUEUE_DEPTH, self._calls.in_flight, self._model_tags)

    def _batch_formed(self, method: str, calls: int) -> None:
        tags = {**self._model_tags, "method": method}
        metrics.observe(metrics.ENGINE_BATCH_SIZE, calls, tags)

    def _count_tokens(self, prompt: int, generation: int) -> None:
        metrics.record_engine_tokens(self._config.name, prompt, generation)

    def _coalesced(
        self, method: str, run: Callable[..., Awaitable[Result]]
    ) -> Callable[[list[tuple[Any, ...]]], Awaitable[list[Result | Exception]]]:
        """A batch of `run`'s calls (each a tuple of its arguments), run call by call."""

        async def batch(calls: list[tuple[Any, ...]]) -> list[Result | Exception]:
            self._batch_formed(method, len(calls))
            return await per_call(run, *zip(*calls, strict=True))

        return batch

    async def _chat_one(self, call: ChatCall, priority: Priority) -> ChatOutput | Rejection:
        [output] = await self._engine.chat([call], priority)
        return output

    async def ready(self) -> None:
        """A real request through the engine: readiness means answering, not just loaded."""
        await self._engine.ready()

    async def check_health(self) -> None:
        # Serve calls this periodically; raising marks the replica unhealthy and replaces it.
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
