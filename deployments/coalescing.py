"""Calls coalesced by `@serve.batch`, in one queue per request priority.

A `@serve.batch` batch answers its callers once all of its calls are done, and a replica runs only
`max_concurrent_batches` of them at once. Were calls of every priority to share one queue, an
online call could wait for the batch lines coalesced with it (which the engine's priority gate may
hold back), or for a batch slot they fill. So calls coalesce with calls of their own priority.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ray import serve

from capabilities.priority import PRIORITIES, Priority
from deployments.config import BatchingConfig

Call = TypeVar("Call")
Outcome = TypeVar("Outcome")
RunBatch = Callable[[list[Call]], Awaitable[list[Outcome]]]


class PriorityBatches(Generic[Call, Outcome]):
    """`run` over coalesced calls: one `@serve.batch` queue per priority, each sized by
    `batching` and running up to `max_concurrent_batches` batches at once. Only inside a Serve
    replica."""

    def __init__(
        self,
        run: RunBatch[Call, Outcome],
        batching: BatchingConfig,
        max_concurrent_batches: int,
    ) -> None:
        self._queues = {
            priority: _queue(run, batching, max_concurrent_batches) for priority in PRIORITIES
        }

    async def submit(self, priority: Priority, call: Call) -> Outcome:
        return await self._queues[priority](call)


def _queue(
    run: RunBatch[Call, Outcome], batching: BatchingConfig, max_concurrent_batches: int
) -> Callable[[Call], Awaitable[Outcome]]:
    # A function of its own per queue: Serve keeps one queue per decorated function.
    @serve.batch(max_concurrent_batches=max_concurrent_batches)
    async def coalesced(calls: list[Any]) -> list[Any]:
        return await run(calls)

    # Ray types the decorated function as a plain Callable, without these documented setters.
    coalesced.set_max_batch_size(batching.max_batch_size)  # type: ignore[attr-defined]
    coalesced.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)  # type: ignore[attr-defined]
    return coalesced
