"""Capability runners: the deployment of a `placement: deployment` capability, scaled on its own.

A runner holds one `CapabilityHost`. Its `run` entry takes a caller's coalesced calls and hands
them to a `@serve.batch` method, so the calls of several callers coalesce too and the capability
runs once over all of them, each call answered on its own.
Settings arrive as the deployment's `user_config`: `reconfigure` loads a new instance beside the
old one and swaps it in, so a settings change never restarts an engine and never mixes old and
new settings inside one run.
"""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.base import Resources
from capabilities.batching import RunCall, RunReply
from capabilities.cache import CacheConfig
from capabilities.host import CapabilityHost, CapabilityInfo, CapabilitySettingsError
from capabilities.registry import capability_class
from deployments.calls.guarded_handle import GuardedCallee, loading
from deployments.config import BatchingConfig, ConfigError, ModelConfig
from deployments.dag.capability_clients import batch_recorder
from deployments.engine.client import engine_client
from deployments.telemetry import metrics
from deployments.telemetry.replica_telemetry import CallCounter, ReplicaReporter

CONCURRENT_BATCHES = 4


def runner_name(capability: str) -> str:
    return f"capability-{capability}"


@serve.deployment
class CapabilityRunner(GuardedCallee):
    def __init__(
        self,
        name: str,
        import_path: str | None,
        engines: dict[str, DeploymentHandle],
        models: dict[str, ModelConfig],
        cache_dir: Path,
        batching: BatchingConfig,
        cache: CacheConfig,
        stats: DeploymentHandle,
    ) -> None:
        resources = Resources(
            engines={
                model: engine_client(models[model], handle) for model, handle in engines.items()
            },
            cache_dir=cache_dir,
            # Cached per process: a reloaded capability asks again for the metric it exports.
            counter=metrics.counter,
        )
        self._host = CapabilityHost(
            capability_class(name, import_path), resources, cache.build(), batch_recorder(stats)
        )
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._calls = CallCounter()
        self._reporting = ReplicaReporter(stats, self._calls).start()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        try:
            with loading():
                await self._host.configure(user_config)
        except CapabilitySettingsError as error:
            raise ConfigError(f"user_config of {runner_name(self._host.name)}: {error}") from None

    async def run(self, calls: list[RunCall]) -> list[RunReply]:
        """The coalesced calls of one caller's batch: one crossing carries them all, and each
        keeps its own reply, so one call's failure stays its own."""
        self._calls.started()
        try:
            return await self._run_batch(calls)
        finally:
            self._calls.finished()

    # More than one batch in flight, so the engine is fed while a batch's results travel back.
    @serve.batch(max_concurrent_batches=CONCURRENT_BATCHES)
    async def _run_batch(self, batches: list[list[RunCall]]) -> list[list[RunReply]]:
        """The batches of several callers (ingress or batch runner replicas), run as one."""
        replies = await self._host.run([call for calls in batches for call in calls])
        ends = list(accumulate(len(calls) for calls in batches))
        return [replies[end - len(calls) : end] for calls, end in zip(batches, ends, strict=True)]

    async def describe(self) -> CapabilityInfo:
        return self._host.describe()

    async def __del__(self) -> None:
        """Serve calls this as the replica shuts down: pending alert deliveries finish first."""
        await self._host.close()
