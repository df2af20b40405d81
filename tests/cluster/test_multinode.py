"""capserve on a real three-node Ray cluster: a head and two worker nodes, each its own
`ray start` on loopback ports, with the app deployed by `serve run`. Engine replicas on both
workers serve traffic, and losing a whole worker node leaves the service answering from the
survivor. The cluster starts once for the module and every process of it is gone after.
"""

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from cluster.local_cluster import LocalCluster, running_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ENGINE = "engine-minilm"
STATS_TIMEOUT_S = 60.0
# Serve notices a lost node's replicas only after Ray's node health checks give up on it.
RECOVERY_TIMEOUT_S = 180.0
HEALTHY_IN_A_ROW = 10


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with running_app(workers=2, engine_replicas=2) as running:
        yield running
    assert running.leftover_processes() == [], "processes of the cluster outlived it"


@pytest.fixture(scope="module")
def http(cluster: LocalCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.base_url, timeout=120) as client:
        yield client


def embed(http: httpx.Client, texts: int = 8) -> httpx.Response:
    # Distinct texts: nothing a cache could answer, every call reaches an engine replica.
    tag = uuid.uuid4().hex
    inputs = [f"where is my card {tag} {index}" for index in range(texts)]
    return http.post("/v1/embeddings", json={"model": "minilm", "input": inputs})


def engine_replicas(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [replica for replica in stats["replicas"] if replica["deployment"] == ENGINE]


def wait_for_stats(http: httpx.Client, settled: Any) -> dict[str, Any]:
    """/v1/stats once `settled(stats)` holds; replicas report every few seconds."""
    deadline = time.monotonic() + STATS_TIMEOUT_S
    while True:
        stats = http.get("/v1/stats").raise_for_status().json()
        if settled(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(1)


def test_engine_replicas_on_both_workers_serve_traffic(
    cluster: LocalCluster, http: httpx.Client
) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: embed(http), range(48)))
    assert Counter(answer.status_code for answer in answers) == {200: 48}

    stats = wait_for_stats(
        http,
        lambda stats: (
            len(engine_replicas(stats)) == 2
            and all(replica["requests"] > 0 for replica in engine_replicas(stats))
        ),
    )
    engines = engine_replicas(stats)
    assert len(engines) == 2, stats["replicas"]
    assert all(replica["requests"] > 0 for replica in engines), engines
    nodes = cluster.node_ids()
    workers = {nodes["worker-1"], nodes["worker-2"]}
    assert {replica["node_id"] for replica in engines} == workers, "one engine per worker node"
    others = {replica["node_id"] for replica in stats["replicas"]} - workers
    assert others == {nodes["head"]}, "ingress and capability runners stay on the head"
    assert {node["node_id"] for node in stats["nodes"]} == workers | others


def test_losing_a_worker_node_leaves_the_survivor_serving(
    cluster: LocalCluster, http: httpx.Client
) -> None:
    survivor_node = cluster.node_ids()["worker-2"]
    before = {
        replica["node_id"]: replica for replica in engine_replicas(http.get("/v1/stats").json())
    }
    assert len(before) == 2

    cluster.kill_node("worker-1")
    killed_at = time.monotonic()
    statuses: Counter[int] = Counter()
    in_a_row = 0
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while in_a_row < HEALTHY_IN_A_ROW:
        assert time.monotonic() < deadline, f"no steady service after the node loss: {statuses}"
        answer = embed(http)
        statuses[answer.status_code] += 1
        if answer.status_code == 200:
            in_a_row += 1
            continue
        in_a_row = 0
        # Until Serve notices the loss, a call may reach the dead replica: it must end as a
        # clean 503 that tells the client to retry, never a 500 or a hang.
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["type"] == "service_unavailable"
        assert "retry-after" in answer.headers
        time.sleep(0.5)

    stats = wait_for_stats(http, lambda stats: len(engine_replicas(stats)) == 1)
    (survivor,) = engine_replicas(stats)
    assert survivor["node_id"] == survivor_node
    assert survivor["requests"] > before[survivor_node]["requests"]
    steady_after_s = time.monotonic() - killed_at
    # Ray declares the node dead only after its health checks fail for a while.
    while cluster.alive_nodes() != 2:
        assert time.monotonic() - killed_at < RECOVERY_TIMEOUT_S, "the lost node still counts"
        time.sleep(2)
    print(
        f"after losing worker-1: {dict(statuses)}, steady {steady_after_s:.1f} s after the loss, "
        f"node declared dead after {time.monotonic() - killed_at:.1f} s"
    )
