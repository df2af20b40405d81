"""The batch runner: a deployment of its own, so ingress restarts never touch running batches.

Each replica looks in the job store for batches with work left (new, interrupted by a crash, or
ended but not yet handed to the result handlers), takes them under a lease and drives them to the
end through the same capabilities and engines as online traffic. The ingress wakes it when a
batch is created or cancelled; it also looks on its own every `poll_interval_s`, which is what
resumes batches after a crash of a runner or of the whole app. Every `cleanup_interval_s` it
deletes expired files and the chunk files of batches that ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from batchjobs.cleanup import clean_storage
from batchjobs.executor import BatchExecutor, failed
from batchjobs.files import FileStorage
from batchjobs.handlers import BatchResult, ResultHandler, load_handler, run_handlers
from batchjobs.schemas import BatchError
from batchjobs.sql_store import open_store
from deployments.batch.lines import BatchLines
from deployments.config import AppConfig, BatchingConfig
from deployments.dag.capability_clients import (
    InlineCapability,
    close_inline,
    configure_inline,
)
from deployments.dag.classify_service import ClassifyWiring
from deployments.http.openai_api import OpenAIEndpoints
from deployments.telemetry import metrics

logger = logging.getLogger("capserve.batch")
BATCH_RUNNER_NAME = "batch-runner"
# A batch whose run raises (not a crash: an error) this often is failed rather than retried.
MAX_RUN_ERRORS = 3


def build_batch_lines(
    config: AppConfig,
    engines: Mapping[str, DeploymentHandle],
    runners: Mapping[str, DeploymentHandle],
    stats: DeploymentHandle,
    batching: BatchingConfig | None,
) -> tuple[BatchLines, dict[str, InlineCapability]]:
    """Batch lines answered through the app's engines and capabilities, and the inline
    capabilities they run on, to be loaded by `configure_inline` before the first line: by the
    batch runner over its bound handles, by `deployments.batch.job` over handles got by name
    (outside Serve, so without `batching`: see ClassifyService)."""
    wiring = ClassifyWiring.of(config, engines, runners, stats, batching)
    lines = BatchLines(config, wiring.service, OpenAIEndpoints(config.models, wiring.engines))
    return lines, wiring.inline


class BatchMetrics:
    """The executor's progress as Prometheus counters."""

    def lines_done(self, completed: int, failed: int) -> None:
        metrics.count(metrics.BATCH_LINES, completed, {"outcome": "completed"})
        metrics.count(metrics.BATCH_LINES, failed, {"outcome": "failed"})

    def batch_ended(self, status: str) -> None:
        metrics.count(metrics.BATCHES, 1, {"status": status})


@serve.deployment(name=BATCH_RUNNER_NAME)
class BatchRunner:
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, DeploymentHandle],
        runners: dict[str, DeploymentHandle],
        stats: DeploymentHandle,
    ) -> None:
        self._settings = config.batch
        self._store = open_store(config.batch_store_url)
        self._storage = FileStorage(config.batch_dir)
        lines, self._inline = build_batch_lines(
            config, engines, runners, stats, config.ingress.batching
        )
        self._handlers: list[tuple[str, ResultHandler]] = [
            (handler.type, load_handler(handler)) for handler in config.batch.result_handlers
        ]
        self._executor = BatchExecutor(
            self._store,
            self._storage,
            lines,
            config.batch,
            self._hand_over,
            owner=f"runner-{uuid.uuid4().hex[:12]}",
            progress=BatchMetrics(),
        )
        self._active: dict[str, asyncio.Task[None]] = {}
        self._run_errors: collections.Counter[str] = collections.Counter()
        self._woken = asyncio.Event()
        self._polling: asyncio.Task[None] | None = None
        self._cleaning: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Settings of the inline capabilities, as the ingress gets them. Batches are taken only
        once they are loaded."""
        await configure_inline(self._inline, user_config, BATCH_RUNNER_NAME)
        if self._polling is None:
            loop = asyncio.get_running_loop()
            self._polling = loop.create_task(self._poll())
            self._cleaning = loop.create_task(self._clean())

    async def __del__(self) -> None:
        """Serve calls this as the replica shuts down: batches in flight stop and release their
        leases (another replica resumes them at once), then pending alert deliveries finish."""
        tasks = [self._polling, self._cleaning, *self._active.values()]
        running = [task for task in tasks if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await close_inline(self._inline)

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._woken.set()

    async def active_batches(self) -> list[str]:
        return sorted(self._active)

    async def check_health(self) -> None:
        if self._polling is not None and self._polling.done():
            raise RuntimeError("the batch runner's polling loop stopped")

    async def _hand_over(self, result: BatchResult) -> None:
        await run_handlers(self._handlers, result)

    async def _poll(self) -> None:
        while True:
            try:
                await self._take_work()
            except Exception:  # the store may be briefly unreachable; the next poll retries
                logger.exception("batch runner: looking for work failed")
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._settings.poll_interval_s)

    async def _clean(self) -> None:
        while True:
            try:
                await clean_storage(self._store, self._storage)
            except Exception:  # the store may be briefly unreachable; the next round retries
                logger.exception("batch runner: storage cleanup failed")
            await asyncio.sleep(self._settings.cleanup_interval_s)

    async def _take_work(self) -> None:
        for batch_id in await self._store.claimable_batches():
            if len(self._active) >= self._settings.max_concurrent_batches:
                return
            if batch_id not in self._active:
                self._active[batch_id] = asyncio.create_task(self._run(batch_id))
                self._count_active()

    async def _run(self, batch_id: str) -> None:
        try:
            await self._executor.run(batch_id)
        except Exception as error:
            logger.exception("batch %s: run failed", batch_id)
            self._run_errors[batch_id] += 1
            if self._run_errors[batch_id] >= MAX_RUN_ERRORS:
                await self._fail(batch_id, f"{type(error).__name__}: {error}")
        finally:
            del self._active[batch_id]
            self._count_active()
            self._woken.set()

    def _count_active(self) -> None:
        metrics.set_gauge(metrics.BATCHES_IN_PROGRESS, len(self._active), {})

    async def _fail(self, batch_id: str, reason: str) -> None:
        error = BatchError(
            code="internal_error",
            message=f"the batch could not be run ({reason}); the runner's log has details",
        )
        await self._store.update_batch(batch_id, failed([error], int(time.time())))
