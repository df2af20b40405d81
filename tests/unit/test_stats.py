"""/v1/stats's aggregation: rolling latency window, replica expiry, nodes and engines."""

import tracemalloc

import numpy as np
import pytest

from capabilities.batching import BatchReport
from deployments.http.request_timing import RequestObservation
from deployments.telemetry.gpu_health import GpuReading
from deployments.telemetry.replica_telemetry import CallCounter, LatencyBuffer
from deployments.telemetry.stats import (
    CapabilityStats,
    EndpointLatencies,
    LatencyWindow,
    ReplicaReport,
    ReplicaTable,
    StatsRecorder,
    engine_stats,
    node_stats,
    replica_stats,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def latencies(seconds: list[float], errors: int = 0, client_errors: int = 0) -> EndpointLatencies:
    return EndpointLatencies(seconds=seconds, errors=errors, client_errors=client_errors)


def report(
    replica_id: str,
    node: str = "n1",
    deployment: str = "engine-minilm",
    requests: int = 0,
    model: str | None = None,
    gpus: list[GpuReading] | None = None,
) -> ReplicaReport:
    return ReplicaReport(
        deployment=deployment,
        replica_id=replica_id,
        node_id=f"{node}-id",
        node_ip=f"10.0.0.{node[-1]}",
        requests=requests,
        in_flight=1,
        model=model,
        gpus=gpus or [],
    )


def gpu(uuid: str, index: int = 0) -> GpuReading:
    return GpuReading(
        index=index,
        uuid=uuid,
        name="NVIDIA H100",
        memory_used_mb=1000.0,
        memory_total_mb=80000.0,
        utilization_pct=50.0,
    )


def test_window_percentiles_per_endpoint_and_overall() -> None:
    window = LatencyWindow(window_s=60, clock=FakeClock())
    window.add({"/v1/classify": latencies([i / 1000 for i in range(1, 101)], errors=2)})
    window.add(
        {
            "/v1/classify": latencies([0.2]),
            "/v1/files/{file_id}": latencies([0.01, 0.03], client_errors=1),
        }
    )

    summary = window.summary()

    assert summary.window_s == 60
    assert list(summary.endpoints) == ["/v1/classify", "/v1/files/{file_id}"]
    classify = summary.endpoints["/v1/classify"]
    assert (classify.requests, classify.errors, classify.client_errors) == (101, 2, 0)
    # Read from 2%-wide buckets: within 1% of the exact nearest-rank percentiles.
    assert classify.p50_ms == pytest.approx(51.0, rel=0.01)
    assert classify.p95_ms == pytest.approx(96.0, rel=0.01)
    files = summary.endpoints["/v1/files/{file_id}"]
    assert (files.requests, files.client_errors) == (2, 1)
    assert files.p50_ms == pytest.approx(10.0, rel=0.01)
    overall = summary.overall
    assert (overall.requests, overall.errors, overall.client_errors) == (103, 2, 1)


def test_window_forgets_flushes_older_than_the_window() -> None:
    clock = FakeClock()
    window = LatencyWindow(window_s=60, clock=clock)
    window.add({"/v1/classify": latencies([5.0])})
    clock.now += 30
    window.add({"/v1/classify": latencies([0.1])})
    clock.now += 31  # the first flush is 61 s old, the second 31 s

    summary = window.summary()

    assert summary.endpoints["/v1/classify"].requests == 1
    assert summary.endpoints["/v1/classify"].p95_ms == pytest.approx(100.0, rel=0.01)
    clock.now += 30
    empty = window.summary()
    assert empty.endpoints == {}
    assert empty.overall.requests == 0
    assert empty.overall.p50_ms is None and empty.overall.p95_ms is None


def test_window_memory_stays_flat_however_long_nobody_asks_for_a_summary() -> None:
    clock = FakeClock()
    window = LatencyWindow(window_s=60, clock=clock)
    rng = np.random.default_rng(0)

    def flush_for(seconds: int) -> None:
        # An ingress replica's flush every second at 200 requests/s, no summary asked.
        for _ in range(seconds):
            clock.now += 1
            window.add({"/v1/classify": latencies(rng.lognormal(-2, 0.5, 200).tolist())})

    tracemalloc.start()
    try:
        flush_for(120)  # the window is full
        full = tracemalloc.get_traced_memory()[0]
        flush_for(600)
        later = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    # Kept as every latency, ten more minutes would add about 4 MB.
    assert later - full < 50_000
    assert window.summary().overall.requests == 61 * 200  # 60 s back and this second


def test_percentiles_of_latencies_beyond_the_buckets_are_the_outer_edges() -> None:
    window = LatencyWindow(window_s=60, clock=FakeClock())
    window.add({"/v1/classify": latencies([0.00001] * 10 + [7200.0] * 10)})

    summary = window.summary().endpoints["/v1/classify"]

    assert (summary.p50_ms, summary.p95_ms) == (0.1, pytest.approx(600_000, rel=0.02))


def test_latency_buffer_groups_by_endpoint_and_counts_errors_by_class() -> None:
    buffer = LatencyBuffer()
    for status, seconds in ((200, 0.1), (503, 0.2), (429, 0.3), (404, 0.4)):
        buffer.add(RequestObservation("/v1/classify", "POST", status, seconds))
    buffer.add(RequestObservation("other", "GET", 404, 0.001))

    taken = buffer.take()

    assert taken["/v1/classify"] == latencies([0.1, 0.2, 0.3, 0.4], errors=1, client_errors=2)
    assert taken["other"] == latencies([0.001], client_errors=1)
    assert buffer.take() == {}


def test_replicas_silent_longer_than_the_ttl_disappear() -> None:
    clock = FakeClock()
    table = ReplicaTable(ttl_s=10, clock=clock)
    table.add(report("r-dead", node="n2"))
    clock.now += 6
    table.add(report("r-live"))
    clock.now += 5  # r-dead silent 11 s, r-live 5 s

    live = table.live()

    assert [(round(age), r.replica_id) for age, r in live] == [(5, "r-live")]
    clock.now += 4
    table.add(report("r-dead", node="n2"))  # a replica that reports again is back
    assert [r.replica_id for _, r in table.live()] == ["r-dead", "r-live"]


def test_a_replica_is_listed_once_with_its_latest_report() -> None:
    clock = FakeClock()
    table = ReplicaTable(clock=clock)
    table.add(report("r1", requests=3))
    clock.now += 2
    table.add(report("r1", requests=7))

    [replica] = replica_stats(table.live())

    assert replica.model_dump() == {
        "deployment": "engine-minilm",
        "replica_id": "r1",
        "node_id": "n1-id",
        "node_ip": "10.0.0.1",
        "requests": 7,
        "in_flight": 1,
        "last_report_s": 0.0,
    }


def test_nodes_gather_their_replicas_and_requests() -> None:
    replicas = replica_stats(
        (0.5, r)
        for r in (
            report("a", node="n1", requests=3),
            report("b", node="n2", requests=4, deployment="Ingress"),
            report("c", node="n1", requests=5, deployment="capability-classification"),
        )
    )

    nodes = node_stats(replicas)

    assert [(n.node_id, n.node_ip, n.replicas, n.requests) for n in nodes] == [
        ("n1-id", "10.0.0.1", ["a", "c"], 8),
        ("n2-id", "10.0.0.2", ["b"], 4),
    ]


def test_engines_list_every_model_with_its_replicas_and_distinct_gpus() -> None:
    reports = [
        report("e1", node="n1", model="minilm", gpus=[gpu("GPU-a"), gpu("GPU-b", 1)]),
        # A second replica sharing GPU-b (a fraction each) and one on another node.
        report("e2", node="n1", model="minilm", gpus=[gpu("GPU-b", 1)]),
        report("e3", node="n2", model="minilm", gpus=[gpu("GPU-c")]),
        report("i1", deployment="Ingress"),
    ]

    engines = engine_stats(["minilm", "tiny-llama"], reports)

    assert engines["minilm"].replicas == 3
    assert [(g.uuid, g.index, g.node_id) for g in engines["minilm"].gpus] == [
        ("GPU-a", 0, "n1-id"),
        ("GPU-b", 1, "n1-id"),
        ("GPU-c", 0, "n2-id"),
    ]
    assert engines["tiny-llama"].model_dump() == {"replicas": 0, "gpus": []}


def test_capability_stats_compute_their_means_once() -> None:
    stats = CapabilityStats()
    stats.add(BatchReport(calls=2, texts=5, unique_texts=4, runs=1, cache_hits=1))
    stats.add(BatchReport(calls=1, texts=2, unique_texts=2, runs=1, cache_hits=0))

    dumped = stats.model_dump()

    assert dumped["mean_batch_size"] == 3.5
    assert dumped["mean_calls_per_batch"] == 1.5
    assert dumped["cache_hit_rate"] == round(1 / 6, 3)


@pytest.mark.asyncio
async def test_the_recorder_snapshot_holds_every_part() -> None:
    recorder = StatsRecorder.func_or_class(["minilm"])
    await recorder.record("classification", BatchReport(calls=1, texts=3, unique_texts=3, runs=1))
    await recorder.record_latencies({"/v1/classify": latencies([0.05, 0.07])})
    await recorder.report_replica(report("e1", model="minilm", requests=2))
    await recorder.report_replica(report("i1", deployment="Ingress", requests=9))

    snapshot = (await recorder.snapshot()).model_dump(mode="json")

    assert snapshot["object"] == "stats"
    assert snapshot["capabilities"]["classification"]["mean_batch_size"] == 3.0
    assert snapshot["latency"]["endpoints"]["/v1/classify"]["requests"] == 2
    assert [r["replica_id"] for r in snapshot["replicas"]] == ["i1", "e1"]
    assert snapshot["nodes"] == [
        {"node_id": "n1-id", "node_ip": "10.0.0.1", "replicas": ["i1", "e1"], "requests": 11}
    ]
    assert snapshot["engines"] == {"minilm": {"replicas": 1, "gpus": []}}


def test_call_counter_counts_answered_and_held_calls() -> None:
    calls = CallCounter()
    calls.started()
    calls.started()
    calls.finished()

    assert (calls.served, calls.in_flight) == (1, 1)
