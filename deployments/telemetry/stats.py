"""What `/v1/stats` shows, gathered in one place from every replica of the app.

Capability runners send each batch's report; ingress replicas send their requests' latencies about
once a second; engine, runner and ingress replicas each report themselves every couple of seconds.
One `StatsRecorder` replica keeps it all and answers snapshots: latencies over a rolling window
(counted in fixed buckets, so its memory does not grow with traffic), the live replicas (a
replica silent for `REPLICA_TTL_S` is gone, with its node), the nodes they run on, and each
engine's replicas and GPUs.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field, computed_field
from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.batching import BatchReport
from deployments.calls.guarded_handle import GuardedCallee, GuardedHandle
from deployments.config import CallGuardConfig
from deployments.http.errors import ServiceUnavailableError
from deployments.telemetry.gpu_health import GpuReading

LATENCY_WINDOW_S = 60
REPLICA_TTL_S = 10.0
Clock = Callable[[], float]


class CapabilityStats(BaseModel):
    """Totals since start.

    A run is one `Capability.run`; a call is one request's share of a batch.
    """

    runs: int = 0
    batches: int = 0
    calls: int = 0
    texts: int = 0
    unique_texts: int = 0
    cache_hits: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_batch_size(self) -> float:
        """Texts per batch: how well concurrent requests coalesce."""
        return round(self.texts / self.batches, 3) if self.batches else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_calls_per_batch(self) -> float:
        """Requests' calls per batch."""
        return round(self.calls / self.batches, 3) if self.batches else 0.0

    @computed_field  # type: ignore[prop-decorator]
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


# Latencies are counted in fixed buckets, log-spaced from 0.1 ms to 10 min, each 2% wider than
# the one before: a percentile read from them is within 1% of the exact one, and what the recorder
# holds depends on the buckets and the window, never on how many requests there were.
BUCKET_GROWTH = 1.02
MIN_LATENCY_S = 1e-4
MAX_LATENCY_S = 600.0
BUCKET_EDGES_S = MIN_LATENCY_S * BUCKET_GROWTH ** np.arange(
    math.ceil(math.log(MAX_LATENCY_S / MIN_LATENCY_S, BUCKET_GROWTH)) + 1
)
# Bucket i holds latencies in [edge i-1, edge i); bucket 0 those below the first edge and the last
# those at or above the last. Each reads as the geometric middle of its edges.
BUCKET_VALUES_S = np.concatenate(
    ([MIN_LATENCY_S], np.sqrt(BUCKET_EDGES_S[:-1] * BUCKET_EDGES_S[1:]), [BUCKET_EDGES_S[-1]])
)


@dataclass
class LatencyCounts:
    """Requests to one route, as counts per latency bucket (only the buckets used)."""

    buckets: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    client_errors: int = 0

    def add(self, part: EndpointLatencies) -> None:
        indexes, counts = np.unique(
            np.searchsorted(BUCKET_EDGES_S, part.seconds, side="right"), return_counts=True
        )
        self.buckets.update(dict(zip(indexes.tolist(), counts.tolist(), strict=True)))
        self.errors += part.errors
        self.client_errors += part.client_errors


def latency_summary(parts: Sequence[LatencyCounts]) -> LatencySummary:
    counts = np.zeros(BUCKET_VALUES_S.size, dtype=np.int64)
    for part in parts:
        np.add.at(counts, list(part.buckets), list(part.buckets.values()))
    requests = int(counts.sum())
    p50_ms = p95_ms = None
    if requests:
        # Nearest rank: the latency below or at which q% of the requests were answered.
        ranks = np.ceil(np.array([0.5, 0.95]) * requests)
        indexes = np.searchsorted(np.cumsum(counts), ranks)
        p50_ms, p95_ms = (round(float(s) * 1000, 2) for s in BUCKET_VALUES_S[indexes])
    return LatencySummary(
        requests=requests,
        errors=sum(part.errors for part in parts),
        client_errors=sum(part.client_errors for part in parts),
        p50_ms=p50_ms,
        p95_ms=p95_ms,
    )


class LatencyWindow:
    """The ingress replicas' flushes of the last `window_s` seconds, stamped on arrival (one
    clock for all replicas, whatever their machines' clocks say) and counted per second of
    arrival, so it holds at most `window_s` seconds' bucket counts per route whatever the
    traffic; seconds that left the window are dropped as flushes arrive."""

    def __init__(self, window_s: int = LATENCY_WINDOW_S, clock: Clock = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._seconds: deque[tuple[int, dict[str, LatencyCounts]]] = deque()

    def add(self, latencies: dict[str, EndpointLatencies]) -> None:
        second = math.floor(self._clock())
        self._forget_before(second - self._window_s)
        if not self._seconds or self._seconds[-1][0] != second:
            self._seconds.append((second, {}))
        by_endpoint = self._seconds[-1][1]
        for endpoint, part in latencies.items():
            by_endpoint.setdefault(endpoint, LatencyCounts()).add(part)

    def _forget_before(self, oldest: float) -> None:
        while self._seconds and self._seconds[0][0] < oldest:
            self._seconds.popleft()

    def summary(self) -> LatencyStats:
        self._forget_before(self._clock() - self._window_s)
        by_endpoint: dict[str, list[LatencyCounts]] = {}
        for _, counts in self._seconds:
            for endpoint, part in counts.items():
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
# A snapshot is read from one replica's memory: it comes in milliseconds, or the recorder is down.
STATS_CALLS = CallGuardConfig(timeout_s=10, accept_timeout_s=5)


def stats_reader(stats: DeploymentHandle) -> GuardedHandle:
    """How /v1/stats asks the recorder: within timeouts and behind a breaker, so a recorder that
    is down or hung answers 503 with Retry-After instead of holding the request."""
    return GuardedHandle("the stats recorder", stats, STATS_CALLS, ServiceUnavailableError)


@serve.deployment(
    name=STATS_NAME, num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0}
)
class StatsRecorder(GuardedCallee):
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
