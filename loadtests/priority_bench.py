"""Online latency while a batch job runs, with request priority off and on, in one run.

    .venv/bin/python loadtests/priority_bench.py [--lines 10000] [--rate 10]
        [--variants fcfs,priority,default,cap=4]

Online traffic is single-text `/v1/classify` requests arriving at `--rate` per second (Poisson
arrivals, so a slow answer never holds the next request back). For each variant, in a fresh
default app (result cache off, so every text is real work):

  1. online alone, for `--alone-s` seconds;
  2. online while a `--lines`-line batch job (`batch_bench.py`'s job, every text distinct) runs,
     until the job ends.

Variants: `fcfs`, the engine as before request priority (vLLM serves requests in arrival order,
batch lines are not held back); `priority`, vLLM's priority order alone; `default`, the app as
shipped (priority order, and the engine's priority gate capping batch lines while online
requests are about, `models[].priority`); `cap=N`, priority order with the cap at N. Writes
`loadtests/results/priority.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.processes import free_port
from cluster.serve_flags import ray_env, selected_flags
from loadtests.apps import PROJECT_ROOT, uncached_default_app, use_app_environment
from loadtests.batch_bench import finish_job, job_texts, submit_job
from loadtests.bench import Measurement, classify_sender, read_texts
from loadtests.process_usage import cpu_ms_by_role, cpu_snapshot

VARIANTS = ("fcfs", "priority", "default", "cap=4")
# The p95 of online requests while the batch runs, against alone, that priority should keep.
GOAL_RATIO = 1.5


async def open_loop(
    base_url: str, workload: str, texts: list[str], rate: float, until: asyncio.Future[Any]
) -> Measurement:
    """Single-text classify requests at `rate` per second, Poisson arrivals, until `until` is
    done; each request is timed from when it was due to its answer."""
    send = classify_sender()
    arrivals = random.Random(7)
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def one(http: httpx.AsyncClient, text: str) -> None:
        started = time.perf_counter()
        try:
            await send(http, {"texts": [text]})
        except (httpx.HTTPError, ValueError) as error:
            errors[f"{type(error).__name__}: {error}"[:300]] += 1
            return
        latencies.append(time.perf_counter() - started)

    sent: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        before = cpu_snapshot()
        started = time.perf_counter()
        while not until.done():
            sent.append(asyncio.create_task(one(http, texts[len(sent) % len(texts)])))
            await asyncio.sleep(arrivals.expovariate(rate))
        seconds = time.perf_counter() - started
        await asyncio.gather(*sent)
        cpu_ms = cpu_ms_by_role(before, cpu_snapshot())
    measurement = Measurement(
        "capserve",
        workload,
        len(latencies),
        seconds,
        errors.total(),
        latencies,
        extra={"error_kinds": dict(errors.most_common(5))},
        cpu_ms=cpu_ms,
    )
    print(json.dumps(measurement.summary()), flush=True)
    return measurement


async def online_alone(base_url: str, texts: list[str], rate: float, seconds: float) -> Measurement:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(seconds, stop.set_result, None)
    return await open_loop(base_url, "online alone", texts, rate, stop)


async def online_with_batch(
    base_url: str, texts: list[str], rate: float, job: list[str]
) -> tuple[Measurement, dict[str, Any]]:
    """Online load for as long as the batch job runs, and what the job did."""
    import openai

    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    started = time.perf_counter()
    batch = await asyncio.to_thread(submit_job, sdk, job)
    finished = asyncio.ensure_future(asyncio.to_thread(finish_job, sdk, batch, len(job), started))
    online = await open_loop(base_url, "online with the batch job", texts, rate, finished)
    return online, await finished


def online_texts(phase: str) -> list[str]:
    """Held-out texts made distinct per phase: the ingress remembers the vectors of texts it
    embedded last (even with the result cache off), which would answer repeats for free."""
    return [f"{text} ({phase} {index})" for index, text in enumerate(read_texts("heldout.csv"))]


def model_settings(variant: str) -> dict[str, dict[str, Any]]:
    """What `variant` sets on the default app's model (`uncached_default_app`)."""
    if variant == "default":
        return {}
    if variant in ("fcfs", "priority"):
        return {
            "engine_args": {"scheduling_policy": variant},
            "priority": {"low_in_flight_while_online": None},
        }
    name, _, cap = variant.partition("=")
    if name != "cap" or not cap.isdigit() or int(cap) < 1:
        raise ValueError(f"unknown variant {variant!r}: fcfs, priority, default or cap=N")
    return {
        "engine_args": {"scheduling_policy": "priority"},
        "priority": {"low_in_flight_while_online": int(cap)},
    }


def run_variant(
    variant: str, arguments: argparse.Namespace, job: list[str], scratch: str
) -> dict[str, Any]:
    """Both phases on a fresh default app set up as `variant` says."""
    settings = model_settings(variant)
    print(f"variant {variant}: {settings}", flush=True)
    with uncached_default_app("capserve-priority-bench", scratch, settings) as base_url:
        asyncio.run(online_alone(base_url, online_texts("warm-up"), arguments.rate, 10))
        alone = asyncio.run(
            online_alone(base_url, online_texts("alone"), arguments.rate, arguments.alone_s)
        )
        busy, batch = asyncio.run(
            online_with_batch(base_url, online_texts("busy"), arguments.rate, job)
        )
    p95_alone, p95_busy = alone.percentile_ms(95), busy.percentile_ms(95)
    ratio = round(p95_busy / p95_alone, 2) if p95_alone and p95_busy else None
    return {
        "variant": variant,
        "model_settings": settings,
        "online_alone": alone.summary(),
        "online_with_batch": busy.summary(),
        "p95_ratio": ratio,
        "batch": {**batch, "lines_per_s": round(batch["lines"] / batch["wall_s"], 1)},
    }


def report(results: dict[str, Any]) -> str:
    setting = (
        f"Measured with `{results['command']}` on {results['machine']}, Serve modes "
        f"{results['serve_flags']}, in one run ({results['seconds']} s). Online: single-text "
        f"`/v1/classify` requests at {results['online_rate']}/s (Poisson arrivals); the batch: "
        f"{results['lines']} distinct single-text `/v1/classify` lines; result cache off."
    )
    header = (
        "| variant | online alone p50 / p95 ms | with the batch p50 / p95 ms "
        "| p95 ratio | online errors | batch lines/s | batch status |"
    )
    lines = [setting, "", header, "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for run in results["runs"]:
        alone, busy, batch = run["online_alone"], run["online_with_batch"], run["batch"]
        lines.append(
            f"| {run['variant']} | {alone['p50_ms']} / {alone['p95_ms']} "
            f"| {busy['p50_ms']} / {busy['p95_ms']} | {run['p95_ratio']} "
            f"| {alone['errors'] + busy['errors']} | {batch['lines_per_s']} "
            f"| {batch['status']}, {batch['output_lines']} lines |"
        )
    lines += ["", f"Goal: p95 ratio with priority at most {GOAL_RATIO}, the batch completed."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=10.0, help="online requests per second")
    parser.add_argument("--alone-s", type=float, default=30.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    arguments = parser.parse_args()
    use_app_environment()
    os.environ.update(ray_env(selected_flags(), free_port))
    job = job_texts(arguments.lines)
    started = time.perf_counter()
    variants = arguments.variants.split(",")
    for variant in variants:
        model_settings(variant)  # an unknown variant stops the run before any app starts
    # One cache folder: each app embeds the examples once, and reuses them.
    with tempfile.TemporaryDirectory(prefix="capserve-priority-bench-") as scratch:
        runs = [run_variant(variant, arguments, job, scratch) for variant in variants]
    results = {
        "command": "python loadtests/priority_bench.py "
        f"--lines {arguments.lines} --rate {arguments.rate:g} --alone-s {arguments.alone_s:g} "
        f"--variants {arguments.variants}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "serve_flags": ",".join(sorted(selected_flags())) or "none",
        "online_rate": arguments.rate,
        "lines": arguments.lines,
        "seconds": round(time.perf_counter() - started),
        "runs": runs,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "priority.json").write_text(json.dumps(results, indent=2) + "\n")
    (arguments.out / "priority.md").write_text(report(results))
    print(report(results), flush=True)


if __name__ == "__main__":
    main()
