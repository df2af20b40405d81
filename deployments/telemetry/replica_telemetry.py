"""What a replica tells the `StatsRecorder` about itself, in the background.

Each engine, capability runner and ingress replica counts the calls it answers and holds, and a
task started in its constructor reports them (with the node it runs on, and an engine's GPUs)
every `REPORT_INTERVAL_S`; an ingress replica also flushes its requests' latencies every
`FLUSH_INTERVAL_S`. Nothing here is on a request's path: reports are sent without waiting for
the recorder, and a failing report is logged, never raised.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http.request_timing import RequestObservation
from deployments.telemetry import metrics
from deployments.telemetry.gpu_health import visible_gpus
from deployments.telemetry.stats import EndpointLatencies, ReplicaReport

logger = logging.getLogger("capserve.stats")
REPORT_INTERVAL_S = 2.0
FLUSH_INTERVAL_S = 1.0


class CallCounter:
    """Calls a replica answered since it started, and those it holds now."""

    def __init__(self) -> None:
        self.served = 0
        self.in_flight = 0

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1
        self.served += 1


@dataclass(frozen=True)
class ReplicaIdentity:
    deployment: str
    replica_id: str
    node_id: str
    node_ip: str

    @classmethod
    def current(cls) -> ReplicaIdentity:
        """This replica's, from Serve's replica context and Ray's runtime context."""
        context = serve.get_replica_context()
        return cls(
            deployment=context.deployment,
            replica_id=context.replica_tag,
            node_id=ray.get_runtime_context().get_node_id(),
            node_ip=ray.util.get_node_ip_address(),
        )


async def every(interval_s: float, action: Callable[[], Awaitable[None]], what: str) -> None:
    """Runs `action` every `interval_s` for the life of the replica. A failure is logged when a
    run of failures begins, not on every beat."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except Exception:  # the next beat tries again
            if not failing:
                logger.warning("%s failed; retrying every %.0f s", what, interval_s, exc_info=True)
            failing = True
        else:
            if failing:
                logger.info("%s works again", what)
            failing = False


class ReplicaReporter:
    """Reports the replica's `CallCounter` to the recorder; an engine replica (`model` set) adds
    the GPUs visible to it."""

    def __init__(
        self, stats: DeploymentHandle, calls: CallCounter, model: str | None = None
    ) -> None:
        self._stats = stats
        self._calls = calls
        self._model = model

    @functools.cached_property
    def _identity(self) -> ReplicaIdentity:
        # Looked up on the first report, inside the running replica.
        return ReplicaIdentity.current()

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(
            every(REPORT_INTERVAL_S, self.report, "reporting this replica to the stats recorder")
        )

    async def report(self) -> None:
        # NVML calls block for a moment; off the event loop.
        gpus = await asyncio.to_thread(visible_gpus) if self._model is not None else []
        report = ReplicaReport(
            deployment=self._identity.deployment,
            replica_id=self._identity.replica_id,
            node_id=self._identity.node_id,
            node_ip=self._identity.node_ip,
            requests=self._calls.served,
            in_flight=self._calls.in_flight,
            model=self._model,
            gpus=gpus,
        )
        self._stats.report_replica.remote(report)


class LatencyBuffer:
    """An ingress replica's requests since its last flush, by route template."""

    def __init__(self) -> None:
        self._pending: dict[str, EndpointLatencies] = {}

    def add(self, observation: RequestObservation) -> None:
        endpoint = self._pending.setdefault(observation.endpoint, EndpointLatencies())
        endpoint.add(observation.status, observation.seconds)

    def take(self) -> dict[str, EndpointLatencies]:
        pending, self._pending = self._pending, {}
        return pending


class IngressTelemetry:
    """The ingress's one observer of HTTP requests: Prometheus metrics, the latencies flushed to
    `/v1/stats`, and the call counts of its replica report."""

    def __init__(self, stats: DeploymentHandle) -> None:
        self._stats = stats
        self._calls = CallCounter()
        self._latencies = LatencyBuffer()
        self._reporter = ReplicaReporter(stats, self._calls)

    def start(self) -> list[asyncio.Task[None]]:
        flushing = asyncio.get_running_loop().create_task(
            every(FLUSH_INTERVAL_S, self.flush, "flushing latencies to the stats recorder")
        )
        return [flushing, self._reporter.start()]

    def started(self) -> None:
        self._calls.started()

    def finished(self, observation: RequestObservation) -> None:
        self._calls.finished()
        metrics.record_http_request(
            observation.endpoint, observation.method, observation.status, observation.seconds
        )
        self._latencies.add(observation)

    async def flush(self) -> None:
        latencies = self._latencies.take()
        if latencies:
            self._stats.record_latencies.remote(latencies)
