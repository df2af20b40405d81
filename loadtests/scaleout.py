"""Scale-out: throughput with 2 engine replicas against 1, each replica pinned to one core.

    .venv/bin/python loadtests/scaleout.py [--requests 120] [--clients 8]

One run, one machine: a real Ray cluster of a head and two worker nodes (`cluster/local_cluster`),
worker i confined to core i with everything it starts (the engine replica, vLLM's engine core and
its CPU worker inherit the affinity, which the report shows). The proxy, ingress and capability
runners run on the head, unpinned. The app first serves with 1 engine replica, then `serve run`
raises it to 2 in place, and the same load runs again: closed-loop `/v1/embeddings` requests of
16 long, distinct texts (the result cache is off), so the engines do the work. Writes
`loadtests/results/scaleout.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.local_cluster import LocalCluster, cluster_serve_config, worker_specs
from deployments.telemetry.replica_telemetry import REPORT_INTERVAL_S
from deployments.telemetry.stats import REPLICA_TTL_S
from loadtests.apps import PROJECT_ROOT
from loadtests.bench import Measurement, closed_loop, read_texts

TEXTS_PER_REQUEST = 16
# Several support messages per text: long inputs make the engine, not HTTP, the bottleneck.
QUERIES_PER_TEXT = 15
ENGINE = "engine-minilm"


def long_texts(count: int) -> list[str]:
    corpus = read_texts("train.csv")
    return [
        f"ticket {index}: "
        + " ".join(
            corpus[(index * QUERIES_PER_TEXT + part) % len(corpus)]
            for part in range(QUERIES_PER_TEXT)
        )
        for index in range(count)
    ]


def requests_of(texts: list[str]) -> list[list[str]]:
    return [texts[i : i + TEXTS_PER_REQUEST] for i in range(0, len(texts), TEXTS_PER_REQUEST)]


async def send(http: httpx.AsyncClient, batch: list[str]) -> int:
    response = await http.post("/v1/embeddings", json={"model": "minilm", "input": batch})
    if response.status_code != 200:
        raise ValueError(response.text)
    return len(response.json()["data"])


def engine_replicas(base_url: str) -> list[dict[str, Any]]:
    stats = httpx.get(f"{base_url}/v1/stats", timeout=30).raise_for_status().json()
    return [replica for replica in stats["replicas"] if replica["deployment"] == ENGINE]


def wait_for_engine_replicas(base_url: str, count: int, timeout_s: float = 600) -> None:
    # A replacement replica's predecessor stays in /v1/stats until its reports are this old.
    time.sleep(REPLICA_TTL_S)
    deadline = time.monotonic() + timeout_s
    while len(engine_replicas(base_url)) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} engine replicas did not report within {timeout_s} s")
        time.sleep(2)


def vllm_affinity(cluster: LocalCluster) -> dict[str, list[list[int]]]:
    """The cores each worker node's vLLM processes may run on: proof of the pinning."""
    found: dict[str, list[list[int]]] = {}
    for name, node in cluster.nodes.items():
        for process in node.processes():
            try:
                title = " ".join(process.cmdline())
                if "EngineCore" in title or "VLLM" in title or "SERVE_REPLICA" in title:
                    found.setdefault(name, []).append(sorted(process.cpu_affinity()))
            except psutil.Error:
                continue
    return found


def cpu_seconds(cluster: LocalCluster) -> dict[str, float]:
    """CPU time used so far by each node's processes, and by this load generator."""
    used = {"load generator": sum(psutil.Process().cpu_times()[:2])}
    for name, node in cluster.nodes.items():
        total = 0.0
        for process in node.processes():
            try:
                total += sum(process.cpu_times()[:2])
            except psutil.Error:
                continue
        used[name] = total
    return used


def measure(
    cluster: LocalCluster,
    label: str,
    warm_up: list[list[str]],
    load: list[list[str]],
    clients: int,
) -> tuple[Measurement, dict[str, float], dict[str, int]]:
    """The measurement, the cores each node kept busy during it, and the requests each engine
    replica served in it."""
    base_url = cluster.base_url
    asyncio.run(closed_loop(label, "warm-up", warm_up, clients, send, base_url))
    served_before = {r["replica_id"]: r["requests"] for r in engine_replicas(base_url)}
    cpu_before = cpu_seconds(cluster)
    measurement = asyncio.run(
        closed_loop(label, f"{TEXTS_PER_REQUEST}-text embeddings", load, clients, send, base_url)
    )
    cpu_after = cpu_seconds(cluster)
    cores = {
        name: round((cpu_after[name] - cpu_before[name]) / measurement.seconds, 2)
        for name in cpu_after
    }
    # Replicas report every 2 s: wait for the last counts of the run.
    time.sleep(2 * REPORT_INTERVAL_S)
    served = {
        f"{r['replica_id']} ({node_name(cluster, r['node_id'])})": r["requests"]
        - served_before.get(r["replica_id"], 0)
        for r in engine_replicas(base_url)
    }
    return measurement, cores, served


def node_name(cluster: LocalCluster, node_id: str) -> str:
    return {node: name for name, node in cluster.node_ids().items()}.get(node_id, node_id)


def markdown(report: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {r['system']} | {r['texts_per_s']} | {r['requests_per_s']} | {r['p50_ms']} "
        f"| {r['p95_ms']} | {r['errors']} |"
        for r in report["measurements"]
    )
    usage = "\n".join(
        f"- {r['system']} replica(s): cores {json.dumps(r['cores'])}; "
        f"requests {json.dumps(r['served'])}"
        for r in report["measurements"]
    )
    return f"""# Scale-out: engine replicas pinned to one core each

Command: `{report["command"]}` ({report["date"]})

{report["requests"]} requests of {TEXTS_PER_REQUEST} distinct texts (~{report["mean_chars"]} chars
each), {report["clients"]} concurrent clients, `/v1/embeddings`, result cache off. A head and two
worker nodes (`ray start` each); worker i pinned to core i; head unpinned.

| engine replicas | texts/s | requests/s | p50 ms | p95 ms | errors |
|---|---|---|---|---|---|
{rows}

Cores busy during each measurement, by node (of 2), and the requests each engine replica served:

{usage}

**2 replicas / 1 replica: {report["ratio"]}x**

Cores of the vLLM and replica processes per worker node: `{json.dumps(report["affinity"])}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    args = parser.parse_args()

    texts = long_texts(TEXTS_PER_REQUEST * (2 * args.requests + 4 * args.clients))
    batches = requests_of(texts)
    warm_ups = [batches[: 2 * args.clients], batches[2 * args.clients : 4 * args.clients]]
    measured = batches[4 * args.clients :]
    loads = [measured[: args.requests], measured[args.requests :]]
    measurements = []
    with LocalCluster(worker_specs(2, pin_cores=True)) as cluster:
        cache = cluster.logs.parent / "cache"
        for replicas, warm_up, load in zip((1, 2), warm_ups, loads, strict=True):
            cluster.deploy(
                cluster_serve_config(cluster.http_port, replicas, cache, result_cache=False)
            )
            wait_for_engine_replicas(cluster.base_url, replicas)
            measurement, cores, served = measure(
                cluster, f"{replicas}", warm_up, load, args.clients
            )
            measurements.append(measurement.summary() | {"cores": cores, "served": served})
        affinity = vllm_affinity(cluster)
    one, two = measurements
    report = {
        "command": "python loadtests/scaleout.py "
        f"--requests {args.requests} --clients {args.clients}",
        "date": time.strftime("%Y-%m-%d"),
        "requests": args.requests,
        "clients": args.clients,
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
        "measurements": measurements,
        "ratio": round(two["texts_per_s"] / one["texts_per_s"], 2),
        "affinity": affinity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaleout.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "scaleout.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
