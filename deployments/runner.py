"""Capability runners: one Serve deployment per capability, scaled on its own.

A runner holds one loaded capability. Its `run` entry hands each call to a `@serve.batch` method,
so calls from concurrent requests coalesce and `capabilities.batching.run_batch` runs the
capability once over all of them.
Settings arrive as the deployment's `user_config`: `reconfigure` builds and loads a new instance
beside the old one and swaps it in, so a settings change never restarts an engine and never mixes
old and new settings inside one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.base import Capability, Resources
from capabilities.batching import RunCall, RunReply, run_batch
from capabilities.cache import CacheConfig
from capabilities.registry import capability_class
from deployments import metrics
from deployments.config import BatchingConfig, CallGuardConfig, ConfigError, validation_problems
from deployments.engine_client import EngineClient
from deployments.guarded_handle import GuardedCallee
from deployments.replica_telemetry import CallCounter, ReplicaReporter

CONCURRENT_BATCHES = 4


class CapabilityInfo(BaseModel):
    name: str
    depends_on: list[str]
    version: str
    settings: dict[str, Any]


def runner_name(capability: str) -> str:
    return f"capability-{capability}"


@serve.deployment
class CapabilityRunner(GuardedCallee):
    def __init__(
        self,
        name: str,
        import_path: str | None,
        engines: dict[str, DeploymentHandle],
        engine_calls: dict[str, CallGuardConfig],
        cache_dir: Path,
        batching: BatchingConfig,
        cache: CacheConfig,
        stats: DeploymentHandle,
    ) -> None:
        self._class = capability_class(name, import_path)
        self._resources = Resources(
            engines={
                model: EngineClient(model, handle, engine_calls[model])
                for model, handle in engines.items()
            },
            cache_dir=cache_dir,
            # Cached per process: a reloaded capability asks again for the metric it exports.
            counter=metrics.counter,
        )
        self._stats = stats
        self._cache = cache.build()
        self._capability: Capability | None = None
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._calls = CallCounter()
        self._reporting = ReplicaReporter(stats, self._calls).start()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        try:
            settings = self._class.settings_model.model_validate(user_config)
        except ValidationError as error:
            raise ConfigError(
                f"user_config of {runner_name(self._class.name)}: {validation_problems(error)}"
            ) from None
        capability = self._class(settings, self._resources)
        await capability.load()
        self._capability = capability

    async def run(self, call: RunCall) -> RunReply:
        self._calls.started()
        try:
            return await self._run_batch(call)
        finally:
            self._calls.finished()

    # More than one batch in flight, so the engine is fed while a batch's results travel back.
    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _run_batch(self, calls: list[RunCall]) -> list[RunReply]:
        assert self._capability is not None, "Serve calls reconfigure before any request"
        replies, report = await run_batch(self._capability, calls, self._cache)
        # Not awaited: counting must never slow down or fail the answer.
        self._stats.record.remote(self._class.name, report)
        cache_consulted = self._cache is not None and self._capability.cacheable
        metrics.record_capability_batch(self._class.name, report, cache_consulted)
        return replies

    async def describe(self) -> CapabilityInfo:
        assert self._capability is not None
        return CapabilityInfo(
            name=self._class.name,
            depends_on=list(self._class.depends_on),
            version=self._capability.version,
            settings=self._capability.settings.model_dump(mode="json", by_alias=True),
        )
