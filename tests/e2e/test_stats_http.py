"""/v1/stats and the Prometheus metrics of the real app: request latencies per route, the live
replicas and their nodes, the engines' GPUs (none here), and capserve's series on Ray's metrics
export port."""

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

TEXTS = ["I still have not received my new card", "top up failed", "What is the exchange rate?"]
# Replicas report every 2 s and ingresses flush every second; Ray exports metrics every 10 s.
# Both waits allow for a busy 2-core CI machine late in the suite.
STATS_TIMEOUT_S = 90.0
METRICS_TIMEOUT_S = 90.0


def eventually(
    check: Callable[[], Any],
    timeout_s: float,
    what: str,
    explain: Callable[[], str] = lambda: "",
) -> Any:
    """`check()`'s first truthy answer, polled until `timeout_s`; `explain()` says on failure
    what the last poll saw."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not show within {timeout_s:.0f} s; last seen: {explain()}")
        time.sleep(0.5)


def ingress_requests(snapshot: dict[str, Any]) -> int:
    """Requests the ingress replicas have served since they started: a running total, unlike
    the latency window, whose counts drop as older requests leave it."""
    return sum(r["requests"] for r in snapshot["replicas"] if r["deployment"] == "Ingress")


@pytest.fixture(scope="module")
def stats(client: httpx.Client) -> dict[str, Any]:
    """A snapshot taken after some classify requests have been answered and reported."""
    before = ingress_requests(client.get("/v1/stats").json())
    # Texts no earlier module sent: cached answers would not reach the engine, and the engine
    # counts and series asserted here must come from this module's own requests.
    run = uuid.uuid4().hex[:8]
    sent = [f"{text} ({run}-{i})" for i, text in enumerate(TEXTS * 3)]
    for text in sent:
        assert client.post("/v1/classify", json={"texts": [text]}).status_code == 200
    assert client.post("/v1/classify", json={"texts": []}).status_code == 422

    # Capabilities run inline in the default app: no runner replicas of their own.
    needed = {"Ingress", "engine-minilm"}
    last: dict[str, Any] = {}

    def reported() -> dict[str, Any] | None:
        snapshot = client.get("/v1/stats").json()
        classify = snapshot["latency"]["endpoints"].get("/v1/classify", {})
        last.update(
            ingress_requests=ingress_requests(snapshot) - before,
            classify=classify,
            deployments=sorted({replica["deployment"] for replica in snapshot["replicas"]}),
        )
        if (
            last["ingress_requests"] >= len(sent)
            and classify.get("requests", 0) >= len(sent) + 1
            and classify.get("client_errors", 0) >= 1
            and needed <= set(last["deployments"])
        ):
            return snapshot
        return None

    return eventually(
        reported, STATS_TIMEOUT_S, "the classify requests and every replica", lambda: repr(last)
    )


def test_latency_percentiles_per_route(stats: dict[str, Any]) -> None:
    latency = stats["latency"]
    assert latency["window_s"] == 60
    classify = latency["endpoints"]["/v1/classify"]
    assert classify["client_errors"] >= 1  # the empty request's 422
    assert 0 < classify["p50_ms"] <= classify["p95_ms"]
    overall = latency["overall"]
    assert overall["requests"] >= classify["requests"]
    assert overall["p95_ms"] > 0


def test_every_replica_reports_its_node(stats: dict[str, Any]) -> None:
    replicas = stats["replicas"]
    by_deployment = {replica["deployment"]: replica for replica in replicas}
    assert {"Ingress", "engine-minilm"} <= set(by_deployment)
    assert not any(name.startswith("capability-") for name in by_deployment)
    for replica in replicas:
        assert len(replica["node_id"]) == 56 and int(replica["node_id"], 16) >= 0
        assert replica["node_ip"] and replica["replica_id"]
        assert 0 <= replica["last_report_s"] <= 10
        assert replica["in_flight"] >= 0
    assert by_deployment["engine-minilm"]["requests"] >= 1
    assert by_deployment["Ingress"]["requests"] >= 1


def test_nodes_gather_the_replicas(stats: dict[str, Any]) -> None:
    nodes = stats["nodes"]
    assert nodes, "no node listed"
    listed = [replica_id for node in nodes for replica_id in node["replicas"]]
    assert sorted(listed) == sorted(replica["replica_id"] for replica in stats["replicas"])
    assert sum(node["requests"] for node in nodes) == sum(r["requests"] for r in stats["replicas"])


def test_engines_without_gpus(stats: dict[str, Any]) -> None:
    assert stats["engines"]["minilm"]["replicas"] >= 1
    assert stats["engines"]["minilm"]["gpus"] == []


def test_capability_counts_are_kept(stats: dict[str, Any]) -> None:
    classification = stats["capabilities"]["classification"]
    assert classification["texts"] >= 1
    assert classification["mean_batch_size"] > 0


def test_metrics_reach_rays_metrics_export(serve_cluster, stats: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{serve_cluster.metrics_port}/metrics"
    fetch_errors: list[str] = []

    def samples() -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError as error:
            fetch_errors.append(repr(error))
            return {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_capserve_"):
                    found.setdefault(sample.name, []).append(sample)
        return found

    # Each replica exports on its own schedule: wait for every series asserted below.
    asserted = {
        "ray_capserve_http_requests_total",
        "ray_capserve_engine_requests_total",
        "ray_capserve_engine_tokens_total",
        "ray_capserve_http_request_duration_seconds_bucket",
        "ray_capserve_capability_texts_total",
    }
    last: dict[str, list[Any]] = {}

    def answered_classify(found: dict[str, list[Any]]) -> list[Any]:
        # Earlier modules also sent /v1/classify requests it refused: other methods, no key.
        return [
            s
            for s in found.get("ray_capserve_http_requests_total", [])
            if s.labels.get("endpoint") == "/v1/classify" and s.labels.get("status") == "200"
        ]

    def exported() -> dict[str, list[Any]] | None:
        last.clear()
        last.update(samples())
        # Replicas export on their own schedule: wait until this module's requests are counted.
        counted = sum(s.value for s in answered_classify(last))
        return last if counted >= len(TEXTS) * 3 and asserted <= last.keys() else None

    found = eventually(
        exported,
        METRICS_TIMEOUT_S,
        "capserve's series on /metrics",
        lambda: (
            f"missing {sorted(asserted - last.keys())}, exported {sorted(last)}, "
            f"{len(fetch_errors)} failed fetches of /metrics {fetch_errors[-2:]}"
        ),
    )
    answered = answered_classify(found)
    assert {s.labels["method"] for s in answered} == {"POST"}
    assert all(s.labels["deployment"] == "Ingress" and s.labels["replica"] for s in answered)
    assert sum(s.value for s in answered) >= len(TEXTS) * 3
    engine = found["ray_capserve_engine_requests_total"][0]
    assert engine.labels["model"] in {"minilm", "tiny-llama"} and engine.value >= 1
    prompt_tokens = [
        s for s in found["ray_capserve_engine_tokens_total"] if s.labels["kind"] == "prompt"
    ]
    assert prompt_tokens and all(s.value > 0 for s in prompt_tokens)
    assert "ray_capserve_http_request_duration_seconds_bucket" in found
    assert "ray_capserve_capability_texts_total" in found
