"""Soak test: mixed traffic at 70% of capacity for ten minutes; memory must stay flat, errors zero.

    .venv/bin/python loadtests/soak.py [--duration 600] [--load 0.7] [--capacity REQUESTS_PER_S]

The default app starts in its own Ray (result cache off, so every request is real work) and,
once `/readyz` answers 200:

  1. warm-up: a short closed loop of the mix, not counted;
  2. capacity: a closed loop of the mix (`--capacity-clients` workers for `--capacity-seconds`)
     gives requests/s at saturation; `--capacity` skips it;
  3. soak: an open loop (requests sent at a constant rate whatever the answers, so a slow server
     meets a growing queue rather than a politer client) at `--load` x capacity for `--duration`
     seconds, plus a small batch job through the Files and Batch API every `--batch-every` s.

The mix is the locust mix of `loadtests/profiles.py` (single, 16-text batch, mixed items with
recommendations/alerts), plus requests asking every capability (gates included) and
`/v1/embeddings`. Every answer is checked; a non-2xx, a wrong result count or an exception is an
error. The resident memory of every process of the app is sampled every `--sample-every` s during
the soak, each process named by its role as in the benchmark's CPU table (each Serve replica by
deployment, the stats replica included; Serve's proxy or HAProxy; vLLM's engine core and worker
with the replica they serve; Ray's own daemons); a process whose least-squares growth over the
soak's second half exceeds `--max-slope` MB/min (and adds up to `MIN_RISE_MB`) is growing, any
other flat. Writes `loadtests/results/soak.json` and `.md`; exits 1 on any error or growing
process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import openai
import psutil
from pydantic import BaseModel

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.processes import free_port
from cluster.serve_flags import ray_env, selected_flags
from loadtests.apps import PROJECT_ROOT, uncached_default_app, use_app_environment
from loadtests.batch_bench import job_file
from loadtests.bench import Measurement
from loadtests.process_usage import ProcessKey, processes_by_role
from loadtests.profiles import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MIXED_ITEMS,
    batch_body,
    failure_message,
    load_texts,
    mixed_body,
    pick,
    single_body,
)

ALL_CAPABILITIES = ["classification", "recommendations", "alerts", "gates"]
ALL_CAPABILITIES_TEXTS = 2
EMBEDDING_TEXTS = 8
EMBEDDING_MODEL = "minilm"
FIRST_ERRORS_KEPT = 10
REQUEST_TIMEOUT_S = 60
READY_TIMEOUT_S = 300
BATCH_POLL_S = 2
BYTES_PER_MB = 1 << 20

Check = Callable[[int, str, int], str | None]


def embeddings_failure(status: int, body: str, expected: int) -> str | None:
    """None for a good `/v1/embeddings` answer; otherwise what went wrong."""
    if not 200 <= status < 300:
        return failure_message(status, body, expected)
    try:
        data = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: answer is not an embedding list: {body[:200]!r}"
    if len(data) != expected:
        return f"HTTP {status}: expected {expected} embeddings, got {len(data)}"
    return None


@dataclass(frozen=True)
class RequestKind:
    """One kind of request of the mix, drawn with probability proportional to `weight`."""

    name: str
    weight: int
    path: str
    build: Callable[[Sequence[str], random.Random], dict[str, Any]]
    texts: int
    check: Check = failure_message


MIX = (
    RequestKind("classify single", 8, "/v1/classify", single_body, 1),
    RequestKind(
        f"classify batch={DEFAULT_BATCH_SIZE}",
        1,
        "/v1/classify",
        lambda texts, rng: batch_body(texts, rng, DEFAULT_BATCH_SIZE),
        DEFAULT_BATCH_SIZE,
    ),
    RequestKind(
        f"classify mixed={DEFAULT_MIXED_ITEMS}",
        2,
        "/v1/classify",
        lambda texts, rng: mixed_body(texts, rng, DEFAULT_MIXED_ITEMS),
        DEFAULT_MIXED_ITEMS,
    ),
    RequestKind(
        f"classify all capabilities={ALL_CAPABILITIES_TEXTS}",
        1,
        "/v1/classify",
        lambda texts, rng: {
            **batch_body(texts, rng, ALL_CAPABILITIES_TEXTS),
            "capabilities": ALL_CAPABILITIES,
        },
        ALL_CAPABILITIES_TEXTS,
    ),
    RequestKind(
        f"embeddings={EMBEDDING_TEXTS}",
        1,
        "/v1/embeddings",
        lambda texts, rng: {"model": EMBEDDING_MODEL, "input": pick(texts, rng, EMBEDDING_TEXTS)},
        EMBEDDING_TEXTS,
        embeddings_failure,
    ),
)
MIX_WEIGHTS = [kind.weight for kind in MIX]


def draw(rng: random.Random) -> RequestKind:
    return rng.choices(MIX, weights=MIX_WEIGHTS)[0]


# --- counting answers --------------------------------------------------------------------------


@dataclass
class Tally:
    """Every answer of one phase, by request kind: status counts, latencies, errors."""

    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latencies_s: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    texts: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def record(
        self, kind: str, status: str, latency_s: float, texts: int, problem: str | None
    ) -> None:
        self.statuses[kind][status] += 1
        if problem is None:
            self.latencies_s[kind].append(latency_s)
            self.texts[kind] += texts
            return
        self.errors[kind] += 1
        if len(self.first_errors) < FIRST_ERRORS_KEPT:
            self.first_errors.append(f"{kind}: {problem}")
            print(f"ERROR {kind}: {problem}", flush=True)

    @property
    def answered(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def measurements(self, seconds: float) -> list[Measurement]:
        return [
            Measurement(
                "capserve",
                kind,
                self.texts[kind],
                seconds,
                self.errors[kind],
                self.latencies_s[kind],
            )
            for kind in sorted(self.statuses)
        ]

    def overall(self, seconds: float) -> Measurement:
        latencies = [latency for values in self.latencies_s.values() for latency in values]
        texts = sum(self.texts.values())
        return Measurement("capserve", "all", texts, seconds, self.error_count, latencies)


async def send(
    http: httpx.AsyncClient,
    kind: RequestKind,
    texts: Sequence[str],
    rng: random.Random,
    tally: Tally,
    started: float,
) -> None:
    """One request of `kind`; its latency runs from `started`, when it was due to be sent."""
    body = kind.build(texts, rng)
    try:
        response = await http.post(kind.path, json=body)
    except httpx.HTTPError as error:
        latency_s = time.perf_counter() - started
        tally.record(
            kind.name, type(error).__name__, latency_s, 0, f"{type(error).__name__}: {error}"
        )
        return
    latency_s = time.perf_counter() - started
    problem = kind.check(response.status_code, response.text, kind.texts)
    if problem is not None:
        problem += f" (X-Request-ID {response.headers.get('x-request-id')})"
    tally.record(kind.name, str(response.status_code), latency_s, kind.texts, problem)


# --- load shapes -------------------------------------------------------------------------------


async def closed_loop(
    http: httpx.AsyncClient, texts: Sequence[str], clients: int, seconds: float, tally: Tally
) -> float:
    """`clients` workers each send one request of the mix at a time for `seconds`; returns the
    seconds it took, the last answers included."""
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            await send(http, draw(rng), texts, rng, tally, time.perf_counter())

    await asyncio.gather(*(worker(seed) for seed in range(clients)))
    return time.perf_counter() - started


@dataclass(frozen=True)
class OpenLoopResult:
    sent: int
    seconds: float  # until the last answer
    max_in_flight: int


async def open_loop(
    http: httpx.AsyncClient, texts: Sequence[str], rate: float, seconds: float, tally: Tally
) -> OpenLoopResult:
    """Sends request i of the mix at `i / rate` seconds, whether earlier ones answered or not."""
    rng = random.Random(1)
    in_flight: set[asyncio.Task[None]] = set()
    max_in_flight = 0
    started = time.perf_counter()
    sent = 0
    while (due := started + sent / rate) < started + seconds:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(http, draw(rng), texts, rng, tally, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        max_in_flight = max(max_in_flight, len(in_flight))
        sent += 1
    await asyncio.gather(*in_flight)
    return OpenLoopResult(sent, time.perf_counter() - started, max_in_flight)


# --- batch jobs --------------------------------------------------------------------------------


class BatchJobReport(BaseModel):
    batch_id: str | None
    status: str
    lines: int
    output_lines: int
    failed_lines: int
    wall_s: float


async def batch_job(
    sdk: openai.AsyncOpenAI, texts: list[str], prefix: str, tally: Tally
) -> BatchJobReport:
    """Upload, create, poll, download and delete one job; anything but every line answered is an
    error of kind "batch job"."""
    kind = f"batch job={len(texts)}"
    started = time.perf_counter()
    report = BatchJobReport(
        batch_id=None,
        status="not created",
        lines=len(texts),
        output_lines=0,
        failed_lines=0,
        wall_s=0,
    )
    try:
        upload = await sdk.files.create(
            file=("soak.jsonl", job_file(texts, prefix)), purpose="batch"
        )
        batch = await sdk.batches.create(
            input_file_id=upload.id,
            # The SDK's Literal lists OpenAI's endpoints; capserve's batches run /v1/classify.
            endpoint="/v1/classify",  # type: ignore[arg-type]
            completion_window="24h",
        )
        report.batch_id = batch.id
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(BATCH_POLL_S)
            batch = await sdk.batches.retrieve(batch.id)
        report.status = batch.status
        report.failed_lines = batch.request_counts.failed if batch.request_counts else 0
        if batch.output_file_id:
            output = (await sdk.files.content(batch.output_file_id)).content
            report.output_lines = len(output.splitlines())
            await sdk.files.delete(batch.output_file_id)
        await sdk.files.delete(upload.id)
    except openai.OpenAIError as error:
        report.status = f"{type(error).__name__}: {error}"
    report.wall_s = round(time.perf_counter() - started, 1)
    good = report.status == "completed" and not report.failed_lines
    good = good and report.output_lines == report.lines
    problem = None if good else f"{report.model_dump_json()}"
    tally.record(kind, report.status[:40], report.wall_s, report.output_lines, problem)
    return report


async def batch_jobs(
    sdk: openai.AsyncOpenAI,
    texts: Sequence[str],
    lines: int,
    every_s: float,
    seconds: float,
    tally: Tally,
) -> list[BatchJobReport]:
    """A job of `lines` lines every `every_s` seconds (or as soon as the last one finished) until
    `seconds` are over."""
    rng = random.Random(2)
    end = time.perf_counter() + seconds
    reports: list[BatchJobReport] = []
    while (started := time.perf_counter()) < end:
        job = pick(texts, rng, lines)
        reports.append(await batch_job(sdk, job, f"job{len(reports)}", tally))
        print(f"batch job {len(reports)}: {reports[-1].status}, {reports[-1].wall_s} s", flush=True)
        await asyncio.sleep(max(0.0, min(started + every_s, end) - time.perf_counter()))
    return reports


# --- resident memory ---------------------------------------------------------------------------


# Growth over the soak's second half that marks a process as growing: 6 MB an hour. The first half
# absorbs warm-up (allocator arenas, caches filling up); a leak keeps going through the second.
MAX_SLOPE_MB_PER_MIN = 0.1
# A fitted rise smaller than this over the whole second half is sampling noise (a garbage
# collection, an arena more or less), however steep it looks over a short soak.
MIN_RISE_MB = 1.0
MIN_SAMPLES_FOR_SLOPE = 3
Verdict = Literal["flat", "growing", "too few samples"]


@dataclass
class MemorySeries:
    pid: int
    role: str
    name: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, RSS MB)


class MemorySampler:
    """RSS of every process this driver started, each named by its role on the request path
    (`processes_by_role`, as the benchmark's CPU table)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._series: dict[ProcessKey, MemorySeries] = {}
        self.rounds: list[float] = []  # seconds since the start of each sampling round

    def sample(self) -> None:
        elapsed = time.perf_counter() - self._started
        self.rounds.append(elapsed)
        for key, found in processes_by_role().items():
            try:
                rss_mb = found.process.memory_info().rss / BYTES_PER_MB
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            series = self._series.setdefault(key, MemorySeries(key[0], found.role, found.name))
            series.samples.append((elapsed, rss_mb))

    async def run(self, every_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
        await asyncio.to_thread(self.sample)

    def series(self) -> list[MemorySeries]:
        return list(self._series.values())


class ProcessMemory(BaseModel):
    role: str
    name: str
    pid: int
    start_mb: float
    end_mb: float
    change_mb: float
    slope_mb_per_min: float | None
    second_half_slope_mb_per_min: float | None
    samples: int
    lifetime: Literal["whole soak", "appeared", "exited", "appeared and exited"]
    verdict: Verdict


def slope_mb_per_min(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of RSS against time; None with too few samples to fit."""
    if len(samples) < MIN_SAMPLES_FOR_SLOPE:
        return None
    minutes = np.array([at for at, _ in samples]) / 60
    return float(np.polyfit(minutes, np.array([mb for _, mb in samples]), 1)[0])


def process_memory(series: MemorySeries, rounds: list[float], max_slope: float) -> ProcessMemory:
    """Start and end RSS, the slopes over the whole soak and its second half, and the verdict:
    growing where the second half's slope exceeds `max_slope` and adds up to `MIN_RISE_MB`."""
    rss = [mb for _, mb in series.samples]
    slope = slope_mb_per_min(series.samples)
    middle = (rounds[0] + rounds[-1]) / 2
    late = [sample for sample in series.samples if sample[0] >= middle]
    late_slope = slope_mb_per_min(late)
    appeared = series.samples[0][0] > rounds[0]
    exited = series.samples[-1][0] < rounds[-1]
    lifetime = {
        (False, False): "whole soak",
        (True, False): "appeared",
        (False, True): "exited",
        (True, True): "appeared and exited",
    }[(appeared, exited)]
    verdict: Verdict = "too few samples"
    if late_slope is not None:
        rise_mb = late_slope * (late[-1][0] - late[0][0]) / 60
        verdict = "growing" if late_slope > max_slope and rise_mb >= MIN_RISE_MB else "flat"
    return ProcessMemory(
        role=series.role,
        name=series.name,
        pid=series.pid,
        start_mb=round(rss[0], 1),
        end_mb=round(rss[-1], 1),
        change_mb=round(rss[-1] - rss[0], 1),
        slope_mb_per_min=None if slope is None else round(slope, 3),
        second_half_slope_mb_per_min=None if late_slope is None else round(late_slope, 3),
        samples=len(series.samples),
        lifetime=lifetime,
        verdict=verdict,
    )


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float
    load: float
    capacity: float | None
    capacity_s: float
    capacity_clients: int
    warmup_s: float
    batch_lines: int
    batch_every_s: float
    sample_every_s: float
    max_slope: float
    api_key: str | None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class KindReport(BaseModel):
    workload: str
    texts: int
    texts_per_s: float
    requests_per_s: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    statuses: dict[str, int]


def kind_reports(tally: Tally, seconds: float) -> list[KindReport]:
    return [
        KindReport.model_validate(
            {**measurement.summary(), "statuses": dict(tally.statuses[measurement.workload])}
        )
        for measurement in tally.measurements(seconds)
    ]


class SoakReport(BaseModel):
    command: str
    machine: str
    serve_flags: list[str]
    capacity_requests_per_s: float
    capacity_measured: bool
    capacity_phase: list[KindReport]
    load: float
    target_requests_per_s: float
    duration_s: float
    sent: int
    sent_requests_per_s: float
    answered_requests_per_s: float
    max_in_flight: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    first_errors: list[str]
    requests: list[KindReport]
    batch_jobs: list[BatchJobReport]
    sample_every_s: float
    max_slope_mb_per_min: float
    processes: list[ProcessMemory]
    growing: list[str]
    passed: bool


async def wait_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if (await http.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1)
    raise TimeoutError(f"/readyz did not answer 200 within {READY_TIMEOUT_S} s")


async def measure_capacity(
    http: httpx.AsyncClient, texts: Sequence[str], settings: SoakSettings
) -> tuple[float, list[KindReport]]:
    """Good answers per second of the mix with `capacity_clients` closed-loop workers."""
    tally = Tally()
    seconds = await closed_loop(http, texts, settings.capacity_clients, settings.capacity_s, tally)
    answered = tally.answered - tally.error_count
    print(f"capacity: {answered / seconds:.1f} requests/s, {tally.error_count} errors", flush=True)
    return answered / seconds, kind_reports(tally, seconds)


async def run_soak(base_url: str, texts: Sequence[str], settings: SoakSettings) -> SoakReport:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(
        base_url=base_url, headers=settings.headers(), timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:
        await wait_ready(http)
        await closed_loop(http, texts, settings.capacity_clients, settings.warmup_s, Tally())
        capacity, capacity_phase = (
            (settings.capacity, [])
            if settings.capacity is not None
            else await measure_capacity(http, texts, settings)
        )
        rate = settings.load * capacity
        print(f"soak: {rate:.1f} requests/s for {settings.duration_s:.0f} s", flush=True)
        sdk = openai.AsyncOpenAI(
            base_url=f"{base_url}/v1",
            api_key=settings.api_key or "unused",
            max_retries=0,  # a retried call would hide the error the soak is looking for
            timeout=REQUEST_TIMEOUT_S,
        )
        tally, jobs_tally = Tally(), Tally()
        sampler, stop_sampling = MemorySampler(), asyncio.Event()
        sampling = asyncio.create_task(sampler.run(settings.sample_every_s, stop_sampling))
        result, jobs = await asyncio.gather(
            open_loop(http, texts, rate, settings.duration_s, tally),
            batch_jobs(
                sdk,
                texts,
                settings.batch_lines,
                settings.batch_every_s,
                settings.duration_s,
                jobs_tally,
            ),
        )
        stop_sampling.set()
        await sampling
    processes = sorted(
        (process_memory(s, sampler.rounds, settings.max_slope) for s in sampler.series()),
        key=lambda process: (process.role, process.pid),
    )
    overall = tally.overall(result.seconds).summary()
    errors = tally.error_count + jobs_tally.error_count
    growing = [f"{p.role} [{p.pid}]" for p in processes if p.verdict == "growing"]
    return SoakReport(
        command="python loadtests/soak.py " + " ".join(sys.argv[1:]),
        machine=f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        serve_flags=sorted(selected_flags()),
        capacity_requests_per_s=round(capacity, 1),
        capacity_measured=settings.capacity is None,
        capacity_phase=capacity_phase,
        load=settings.load,
        target_requests_per_s=round(rate, 1),
        duration_s=round(result.seconds, 1),
        sent=result.sent,
        sent_requests_per_s=round(result.sent / settings.duration_s, 1),
        answered_requests_per_s=round(tally.answered / result.seconds, 1),
        max_in_flight=result.max_in_flight,
        p50_ms=overall["p50_ms"],
        p95_ms=overall["p95_ms"],
        p99_ms=overall["p99_ms"],
        errors=errors,
        first_errors=(tally.first_errors + jobs_tally.first_errors)[:FIRST_ERRORS_KEPT],
        requests=kind_reports(tally, result.seconds) + kind_reports(jobs_tally, result.seconds),
        batch_jobs=jobs,
        sample_every_s=settings.sample_every_s,
        max_slope_mb_per_min=settings.max_slope,
        processes=processes,
        growing=growing,
        passed=errors == 0 and not growing,
    )


# --- report ------------------------------------------------------------------------------------


def markdown(report: SoakReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    headline = (
        f"Soak: `{report.command}` on {report.machine}, Serve modes "
        f"{', '.join(report.serve_flags) or 'off'}: **{verdict}** "
        f"({report.errors} errors, {len(report.growing)} processes growing)."
    )
    capacity_source = "measured" if report.capacity_measured else "given"
    memory_note = (
        f"Resident memory per process, sampled every {report.sample_every_s:g} s of the soak "
        f"(start = first sample, after warm-up and the capacity phase); MB/min = least-squares "
        f"slope over the whole soak and over its second half; growing = second half above "
        f"{report.max_slope_mb_per_min} MB/min and rising {MIN_RISE_MB:g} MB or more."
    )
    summary = {
        f"capacity, requests/s ({capacity_source})": report.capacity_requests_per_s,
        "load": report.load,
        "target requests/s": report.target_requests_per_s,
        "sent requests/s": report.sent_requests_per_s,
        "answered requests/s": report.answered_requests_per_s,
        "duration s": report.duration_s,
        "requests sent": report.sent,
        "most requests in flight": report.max_in_flight,
        "p50 / p95 / p99 ms": f"{report.p50_ms} / {report.p95_ms} / {report.p99_ms}",
        "batch jobs": len(report.batch_jobs),
        "errors": report.errors,
        "capacity-phase errors": sum(kind.errors for kind in report.capacity_phase),
    }
    lines = [headline, "", "| measure | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in summary.items()]
    lines += [
        "",
        "| soak requests | texts/s | req/s | p50 ms | p95 ms | p99 ms | errors | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [
        f"| {k.workload} | {k.texts_per_s} | {k.requests_per_s} | {k.p50_ms} | {k.p95_ms} "
        f"| {k.p99_ms} | {k.errors} | {json.dumps(k.statuses)} |"
        for k in report.requests
    ]
    lines += [
        "",
        memory_note,
        "",
        (
            "| process | title | pid | start MB | end MB | change MB | MB/min "
            "| MB/min, 2nd half | samples | lifetime | verdict |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {p.role} | {p.name} | {p.pid} | {p.start_mb} | {p.end_mb} | {p.change_mb} "
        f"| {p.slope_mb_per_min} | {p.second_half_slope_mb_per_min} | {p.samples} | {p.lifetime} "
        f"| {p.verdict.upper() if p.verdict == 'growing' else p.verdict} |"
        for p in report.processes
    ]
    if report.first_errors:
        lines += ["", "First errors:", ""] + [f"- {error}" for error in report.first_errors]
    return "\n".join(lines) + "\n"


def parse_settings() -> tuple[SoakSettings, Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600, help="soak seconds")
    parser.add_argument("--load", type=float, default=0.7, help="share of capacity to offer")
    parser.add_argument("--capacity", type=float, help="requests/s at saturation; skips measuring")
    parser.add_argument("--capacity-seconds", type=float, default=60)
    parser.add_argument("--capacity-clients", type=int, default=32)
    parser.add_argument("--warmup-seconds", type=float, default=10)
    parser.add_argument("--batch-lines", type=int, default=200, help="lines of each batch job")
    parser.add_argument("--batch-every", type=float, default=60, help="seconds between jobs")
    parser.add_argument(
        "--sample-every", type=float, default=10, help="seconds between RSS samples"
    )
    parser.add_argument(
        "--max-slope",
        type=float,
        default=MAX_SLOPE_MB_PER_MIN,
        help="MB/min of RSS growth over the soak's second half that flags a process as growing",
    )
    parser.add_argument("--api-key", help="sent as a bearer token when the app requires keys")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    arguments = parser.parse_args()
    positive = ("duration", "load", "capacity_seconds", "batch_every", "sample_every")
    for name in positive:
        if getattr(arguments, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    if arguments.capacity is not None and arguments.capacity <= 0:
        parser.error("--capacity must be above 0 requests/s")
    if arguments.capacity_clients < 1 or arguments.batch_lines < 1:
        parser.error("--capacity-clients and --batch-lines must be at least 1")
    settings = SoakSettings(
        duration_s=arguments.duration,
        load=arguments.load,
        capacity=arguments.capacity,
        capacity_s=arguments.capacity_seconds,
        capacity_clients=arguments.capacity_clients,
        warmup_s=arguments.warmup_seconds,
        batch_lines=arguments.batch_lines,
        batch_every_s=arguments.batch_every,
        sample_every_s=arguments.sample_every,
        max_slope=arguments.max_slope,
        api_key=arguments.api_key,
    )
    return settings, arguments.out


def main() -> None:
    settings, out = parse_settings()
    use_app_environment()
    # The modes the app ships with (HAProxy and throughput unless CAPSERVE_SERVE_FLAGS says
    # otherwise), set before this process starts Ray, as `make run` does.
    os.environ.update(ray_env(selected_flags(), free_port))
    texts = load_texts(PROJECT_ROOT / "data" / "banking77" / "heldout.csv")
    texts += load_texts(PROJECT_ROOT / "data" / "banking77" / "train.csv")
    with (
        tempfile.TemporaryDirectory(prefix="capserve-soak-") as cache_dir,
        uncached_default_app("capserve-soak", cache_dir) as base_url,
    ):
        report = asyncio.run(run_soak(base_url, texts, settings))
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(report.model_dump_json(indent=2) + "\n")
    (out / "soak.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
