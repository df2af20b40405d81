"""The batch runner: a deployment of its own, so ingress restarts never touch running batches.

Each replica looks in the job store for batches with work left (new, interrupted by a crash, or
ended but not yet handed to the result handlers), takes them under a lease, fairly across tenants
(`batchjobs.scheduler`), and drives them to the end through the same capabilities and engines as
online traffic, each line counted against its key's rate limits. The ingress wakes it when a
batch is created or cancelled; it also looks on its own every `poll_interval_s`, which is what
resumes batches after a crash of a runner or of the whole app. Every `cleanup_interval_s` it
deletes expired files and the chunk files of batches that ended. It starts without the store and
opens it when it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from batchjobs.cleanup import clean_storage
from batchjobs.executor import BatchExecutor
from batchjobs.files import FileStorage
from batchjobs.handlers import BatchResult, LoadedHandler, run_handlers
from batchjobs.scheduler import BatchScheduler
from batchjobs.store import StoreUnavailableError
from batchjobs.store_opener import StoreOpener
from deployments.batch.lines import BatchLines
from deployments.config import AppConfig, BatchingConfig
from deployments.dag.capability_clients import (
    InlineCapability,
    close_inline,
    configure_inline,
)
from deployments.dag.classify_service import ClassifyWiring
from deployments.http.openai_api import OpenAIEndpoints
from deployments.http.rate_limit import RateLimiter
from deployments.telemetry import metrics

logger = logging.getLogger("capserve.batch")
BATCH_RUNNER_NAME = "batch-runner"


def build_batch_lines(
    config: AppConfig,
    engines: Mapping[str, DeploymentHandle],
    runners: Mapping[str, DeploymentHandle],
    stats: DeploymentHandle,
    batching: BatchingConfig | None,
    rate_limiter: RateLimiter | None,
) -> tuple[BatchLines, dict[str, InlineCapability]]:
    """Batch lines answered through the app's engines and capabilities, and the inline
    capabilities they run on, to be loaded by `configure_inline` before the first line: by the
    batch runner over its bound handles, counted against each line's key's rate limits; by
    `deployments.batch.job` over handles got by name (outside Serve, so without `batching`: see
    ClassifyService), for the operator, so without limits."""
    wiring = ClassifyWiring.of(config, engines, runners, stats, batching)
    openai_endpoints = OpenAIEndpoints(config.models, wiring.engines, config.limits)
    lines = BatchLines(config, wiring.service, openai_endpoints, rate_limiter)
    return lines, wiring.inline


class BatchMetrics:
    """The executor's progress as Prometheus counters."""

    def lines_done(self, completed: int, failed: int) -> None:
        metrics.count(metrics.BATCH_LINES, completed, {"outcome": "completed"})
        metrics.count(metrics.BATCH_LINES, failed, {"outcome": "failed"})

    def batch_ended(self, status: str) -> None:
        metrics.count(metrics.BATCHES, 1, {"status": status})

    def batches_active(self, count: int) -> None:
        metrics.set_gauge(metrics.BATCHES_IN_PROGRESS, count, {})


@serve.deployment(name=BATCH_RUNNER_NAME)
class BatchRunner:
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, DeploymentHandle],
        runners: dict[str, DeploymentHandle],
        stats: DeploymentHandle,
    ) -> None:
        self._config = config
        self._stores = StoreOpener(config.batch_store_url, config.batch.store_retry_s)
        self._storage = FileStorage(config.batch_dir)
        self._lines, self._inline = build_batch_lines(
            config,
            engines,
            runners,
            stats,
            config.ingress.batching,
            RateLimiter(config.rate_limits),
        )
        self._handlers = [LoadedHandler.of(handler) for handler in config.batch.result_handlers]
        self._owner = f"runner-{uuid.uuid4().hex[:12]}"
        self._metrics = BatchMetrics()
        self._scheduler: BatchScheduler | None = None
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
        loops = [task for task in (self._polling, self._cleaning) if task is not None]
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._scheduler is not None:
            await self._scheduler.stop()
        await close_inline(self._inline)

    def wake(self) -> None:
        """Look for work now rather than at the next poll."""
        self._woken.set()

    async def active_batches(self) -> list[str]:
        return [] if self._scheduler is None else self._scheduler.active

    async def check_health(self) -> None:
        if self._polling is not None and self._polling.done():
            raise RuntimeError("the batch runner's polling loop stopped")

    async def _hand_over(self, result: BatchResult) -> None:
        await run_handlers(self._handlers, result)

    async def _poll(self) -> None:
        while True:
            try:
                scheduler = await self._scheduler_on_store()
                await scheduler.take_work()
            except StoreUnavailableError as error:
                # The opener logs its attempts; batches stopped by an outage log themselves.
                logger.debug("batch runner: %s", error)
            except Exception:  # the store may be briefly unreachable; the next poll retries
                logger.exception("batch runner: looking for work failed")
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._config.batch.poll_interval_s)

    async def _scheduler_on_store(self) -> BatchScheduler:
        """The scheduler, made once the store has opened."""
        if self._scheduler is None:
            store = await self._stores.get()
            executor = BatchExecutor(
                store,
                self._storage,
                self._lines,
                self._config.batch,
                self._hand_over,
                owner=self._owner,
                progress=self._metrics,
            )
            self._scheduler = BatchScheduler(
                store,
                executor,
                self._config.batch.max_concurrent_batches,
                self._config.batch.max_lines_per_tenant,
                self._started_or_stopped,
            )
        return self._scheduler

    async def _clean(self) -> None:
        while True:
            try:
                await clean_storage(await self._stores.get(), self._storage)
            except StoreUnavailableError as error:
                logger.debug("batch runner: no storage cleanup: %s", error)
            except Exception:  # the store may be briefly unreachable; the next round retries
                logger.exception("batch runner: storage cleanup failed")
            await asyncio.sleep(self._config.batch.cleanup_interval_s)

    def _started_or_stopped(self) -> None:
        assert self._scheduler is not None
        self._metrics.batches_active(len(self._scheduler.active))
        self._woken.set()
