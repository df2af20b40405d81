"""What an engine's CPU threads are worth, in one run: every workload once with the engine
deployment at `num_cpus: 0` (Ray then sets OMP_NUM_THREADS=1 in the replica, which vLLM's engine
core inherits) and once at `num_cpus: 2` (two threads), each app alone in a fresh Ray cluster
with the shipped Serve modes and the result cache off:

  - the default app (MiniLM): 64-text requests from 8 clients, 1-text requests from 32 clients;
  - the generative app on Gemma 3 270M: 8-text requests from 8 clients.

    .venv/bin/python loadtests/engine_threads.py     # ~10 min; writes results/engine_threads.*
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.processes import free_port
from loadtests.apps import (
    PROJECT_ROOT,
    default_app,
    deploy_config,
    gemma_model,
    generative_app,
    serve_cluster,
    use_app_environment,
)
from loadtests.bench import (
    FULL,
    Measurement,
    Workloads,
    capserve_generative,
    cluster_environment,
    embedding_workloads,
    environment,
    read_texts,
    texts_sender,
    variant_named,
)
from tests.gemma import build_gemma

ENGINE_CPUS = (0, 2)


def measure(
    app: dict[str, Any], cpus: int, workloads: Workloads, gemma: str | None
) -> list[Measurement]:
    """`app` alone with its engine at `cpus`; the generative workload where `gemma` names its
    model, else the embedding ones."""
    from deployments.deploy import deploy, wait_running

    app["args"]["models"][0].setdefault("deployment", {})["num_cpus"] = cpus
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with serve_cluster(f"engine-threads-{cpus}", port):
        config = deploy_config([app], port)
        deploy(config)
        wait_running(config)
        if gemma is None:
            return asyncio.run(embedding_workloads("capserve", base_url, workloads, texts_sender()))
        return [asyncio.run(capserve_generative(base_url, gemma, workloads))]


def main() -> None:
    use_app_environment()
    corpus = read_texts("heldout.csv") + read_texts("examples.csv")
    sizes = replace(FULL, saturation=2048, single_clients=(32,), single_per_client=40)
    workloads = Workloads.of(corpus, sizes)
    gemma = gemma_model(build_gemma())
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        environment(cluster_environment(variant_named("both"))),
    ):
        for cpus in ENGINE_CPUS:
            default = default_app(scratch)
            default["args"]["cache"] = {"enabled": False}
            generative = generative_app(default, gemma, scratch)
            measured = measure(default, cpus, workloads, None)
            measured += measure(generative, cpus, workloads, gemma.name)
            for m in measured:
                rows.append({"engine_num_cpus": cpus, **m.summary()})
                print(json.dumps(rows[-1]), flush=True)
    out = PROJECT_ROOT / "loadtests" / "results"
    (out / "engine_threads.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "Measured with `.venv/bin/python loadtests/engine_threads.py`, one run.",
        "",
        "| workload | engine num_cpus | texts/s | p95 ms | CPU ms per text |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['workload']} | {r['engine_num_cpus']} | {r['texts_per_s']} | {r['p95_ms']} | "
            f"{r['cpu_ms_per_text']['total']} |"
            for r in sorted(rows, key=lambda r: (r["workload"], r["engine_num_cpus"]))
        ),
    ]
    (out / "engine_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
