"""What `/v1/stats` shows, gathered in one place from every replica of the app.

Capability runners send each batch's report; ingress replicas send their requests' latencies about
once a second; engine, runner and ingress replicas each report themselves every couple of seconds.
One `StatsRecorder` replica keeps it all and answers snapshots: latencies over a rolling window,
the live replicas (a replica silent for `REPLICA_TTL_S` is gone, with its node), the nodes they
run on, and each engine's replicas and GPUs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pydantic import BaseModel, Field, computed_field
from ray import serve

from capabilities.batching import BatchReport
from deployments.telemetry.gpu_health import GpuReading

LATENCY_WINDOW_S = 60
REPLICA_TTL_S = 10.0
Clock = Callable[[], float]


class CapabilityStats(BaseModel):
    """Totals since start: a run is one `Capability.run`; a call is one request's share of a batch."""

    runs: int = 0
    batches: int = 0
    calls: int = 0
    texts: int = 0
    unique_texts: int = 0
    cache_hits: int = 0

    @computed_field
    @property
    def mean_batch_size(self) -> float:
        """Texts per batch: how well concurrent requests coalesce."""
        return round(self.texts / self.batches, 3) if self.batches else 0.0

    @computed_field
    @property
    def mean_calls_per_batch(self) -> float:
        """Requests' calls per batch."""
        return round(self.calls / self.batches, 3) if self.batches else 0.0

    @computed_field
    @property
    def cache_hit_rate(self) -> float:
        """Share of distinct inputs answered by the result cache instead of a run."""
        return round(self.cache_hits / self.unique_texts, 3) if self.unique_texts else 0.0

    def add(self, report: BatchReport) -> None:
        self.runs += report.runs
        self.batches += 1
        self.calls += report.calls
        self.texts += report.texts
        self.unique_texts += report.unique_texts
        self.cache_hits += report.cache_hits


class EndpointLatencies(BaseModel):
    """Requests to one route an ingress replica answered since its last flush."""

    seconds: list[float] = []
    errors: int = 0
    client_errors: int = 0

    def add(self, status: int, seconds: float) -> None:
        self.seconds.append(seconds)
        if status >= 500:
            self.errors += 1
        elif status >= 400:
            self.client_errors += 1


class LatencySummary(BaseModel):
    requests: int
    errors: int = Field(description="Answers with a 5xx status.")
    client_errors: int = Field(description="Answers with a 4xx status.")
    p50_ms: float | None = Field(description="Median latency; null without requests.")
    p95_ms: float | None


class LatencyStats(BaseModel):
    window_s: int
    endpoints: dict[str, LatencySummary] = Field(
        description="By route template, e.g. `/v1/files/{file_id}`; `other` for unknown paths."
    )
    overall: LatencySummary


class ReplicaReport(BaseModel):
    """What a replica says about itself every few seconds."""

    deployment: str
    replica_id: str
    node_id: str
    node_ip: str
    requests: int
    in_flight: int
    model: str | None = None
    """The model an engine replica serves; None for other replicas."""
    gpus: list[GpuReading] = []


class ReplicaStats(BaseModel):
    deployment: str
    replica_id: str
    node_id: str = Field(description="Ray's hex id of the node the replica runs on.")
    node_ip: str
    requests: int = Field(description="Calls (ingress: HTTP requests) answered since it started.")
    in_flight: int = Field(description="Calls inside the replica not yet answered.")
    last_report_s: float = Field(description="Seconds since the replica last reported.")


class NodeStats(BaseModel):
    node_id: str
    node_ip: str
    replicas: list[str]
    requests: int


class EngineGpu(GpuReading):
    node_id: str


class EngineStats(BaseModel):
    replicas: int
    gpus: list[EngineGpu] = Field(description="Empty where the engines run without NVIDIA GPUs.")


class StatsSnapshot(BaseModel):
    object: str = "stats"
    since: int
    capabilities: dict[str, CapabilityStats]
    latency: LatencyStats
    replicas: list[ReplicaStats]
    nodes: list[NodeStats]
    engines: dict[str, EngineStats]


def latency_summary(parts: Sequence[EndpointLatencies]) -> LatencySummary:
    seconds = np.fromiter((s for part in parts for s in part.seconds), dtype=np.float64)
    p50_ms = p95_ms = None
    if seconds.size:
        p50_ms, p95_ms = (round(float(ms), 2) for ms in np.percentile(seconds, [50, 95]) * 1000)
    return LatencySummary(
        requests=int(seconds.size),
        errors=sum(part.errors for part in parts),
        client_errors=sum(part.client_errors for part in parts),
        p50_ms=p50_ms,
        p95_ms=p95_ms,
    )


class LatencyWindow:
    """The ingress replicas' flushes of the last `window_s` seconds, stamped on arrival (one
    clock for all replicas, whatever their machines' clocks say)."""

    def __init__(self, window_s: int = LATENCY_WINDOW_S, clock: Clock = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._flushes: deque[tuple[float, dict[str, EndpointLatencies]]] = deque()

    def add(self, latencies: dict[str, EndpointLatencies]) -> None:
        self._flushes.append((self._clock(), latencies))

    def summary(self) -> LatencyStats:
        oldest = self._clock() - self._window_s
        while self._flushes and self._flushes[0][0] < oldest:
            self._flushes.popleft()
        by_endpoint: dict[str, list[EndpointLatencies]] = {}
        for _, flush in self._flushes:
            for endpoint, part in flush.items():
                by_endpoint.setdefault(endpoint, []).append(part)
        return LatencyStats(
            window_s=self._window_s,
            endpoints={
                endpoint: latency_summary(parts) for endpoint, parts in sorted(by_endpoint.items())
            },
            overall=latency_summary([part for parts in by_endpoint.values() for part in parts]),
        )


class ReplicaTable:
    """The latest report of every replica heard from within `ttl_s`."""

    def __init__(self, ttl_s: float = REPLICA_TTL_S, clock: Clock = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._reports: dict[str, tuple[float, ReplicaReport]] = {}

    def add(self, report: ReplicaReport) -> None:
        self._reports[report.replica_id] = (self._clock(), report)

    def live(self) -> list[tuple[float, ReplicaReport]]:
        """(seconds since its report, report) of each live replica, by deployment and id."""
        now = self._clock()
        for replica_id, (received, _) in list(self._reports.items()):
            if now - received > self._ttl_s:
                del self._reports[replica_id]
        return sorted(
            ((now - received, report) for received, report in self._reports.values()),
            key=lambda entry: (entry[1].deployment, entry[1].replica_id),
        )


def replica_stats(live: Iterable[tuple[float, ReplicaReport]]) -> list[ReplicaStats]:
    return [
        ReplicaStats(
            **report.model_dump(include=set(ReplicaStats.model_fields)),
            last_report_s=round(age, 2),
        )
        for age, report in live
    ]


def node_stats(replicas: Iterable[ReplicaStats]) -> list[NodeStats]:
    nodes: dict[str, NodeStats] = {}
    for replica in replicas:
        node = nodes.setdefault(
            replica.node_id,
            NodeStats(node_id=replica.node_id, node_ip=replica.node_ip, replicas=[], requests=0),
        )
        node.replicas.append(replica.replica_id)
        node.requests += replica.requests
    return sorted(nodes.values(), key=lambda node: (node.node_ip, node.node_id))


def engine_stats(models: Iterable[str], reports: Iterable[ReplicaReport]) -> dict[str, EngineStats]:
    """Each configured model's live replicas and their GPUs; a GPU that replicas share (a
    fraction each) is listed once."""
    engines = {model: EngineStats(replicas=0, gpus=[]) for model in models}
    for report in reports:
        if report.model is None:
            continue
        engine = engines.setdefault(report.model, EngineStats(replicas=0, gpus=[]))
        engine.replicas += 1
        listed = {gpu.uuid for gpu in engine.gpus}
        engine.gpus += [
            EngineGpu(**gpu.model_dump(), node_id=report.node_id)
            for gpu in report.gpus
            if gpu.uuid not in listed
        ]
    return engines


STATS_NAME = "stats"


@serve.deployment(
    name=STATS_NAME, num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0}
)
class StatsRecorder:
    """One replica on purpose: it must hear from every replica of the app. Methods are async so
    they run on the replica's event loop, one at a time, with no locking."""

    def __init__(self, models: list[str]) -> None:
        self._since = int(time.time())
        self._models = models
        self._capabilities: dict[str, CapabilityStats] = {}
        self._latency = LatencyWindow()
        self._replicas = ReplicaTable()

    async def record(self, capability: str, report: BatchReport) -> None:
        self._capabilities.setdefault(capability, CapabilityStats()).add(report)

    async def record_latencies(self, latencies: dict[str, EndpointLatencies]) -> None:
        self._latency.add(latencies)

    async def report_replica(self, report: ReplicaReport) -> None:
        self._replicas.add(report)

    async def snapshot(self) -> StatsSnapshot:
        live = self._replicas.live()
        replicas = replica_stats(live)
        return StatsSnapshot(
            since=self._since,
            capabilities=dict(sorted(self._capabilities.items())),
            latency=self._latency.summary(),
            replicas=replicas,
            nodes=node_stats(replicas),
            engines=engine_stats(self._models, (report for _, report in live)),
        )
