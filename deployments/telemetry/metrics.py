"""Every Prometheus metric capserve exports, each defined once here.

The instruments are Ray Serve's (`ray.serve.metrics`): inside a replica they carry the
`deployment`, `replica` and `application` tags themselves, so every replica exports series of its
own and dashboards `sum()` across them. Ray prefixes every name with `ray_` on the node's metrics
port; the Prometheus scrape config strips it again, so the names below are the ones dashboards
and alerts use. Instruments are made on first use and cached, once per process (Ray refuses a
second registration of one name with other tags). Outside Ray (unit tests, the offline
benchmark) recording is a no-op.

Capability logic never imports Ray; it gets counters through `Resources.counter`, which is
`counter` below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ray.serve import metrics

from capabilities.batching import BatchReport

# 5 ms to 60 s: a cached classify answers in milliseconds, a batch-size embedding call in
# seconds on CPU, and the runners' call timeout is 120 s.
LATENCY_BOUNDARIES_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Up to the largest `max_batch_size` the config accepts in practice.
BATCH_SIZE_BOUNDARIES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
OTHER = "other"


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    tag_keys: tuple[str, ...]


@dataclass(frozen=True)
class HistogramMetric(Metric):
    boundaries: tuple[float, ...]


HTTP_REQUESTS = Metric(
    "capserve_http_requests_total",
    "HTTP requests answered by the ingress, by route template, method and status.",
    ("endpoint", "method", "status"),
)
HTTP_REQUEST_DURATION = HistogramMetric(
    "capserve_http_request_duration_seconds",
    "Time from a request reaching the ingress app to its last response byte.",
    ("endpoint", "method"),
    LATENCY_BOUNDARIES_S,
)
CAPABILITY_RUNS = Metric(
    "capserve_capability_runs_total",
    "Capability.run calls: one per distinct options in a runner batch with uncached inputs.",
    ("capability",),
)
CAPABILITY_TEXTS = Metric(
    "capserve_capability_texts_total", "Texts a capability runner answered.", ("capability",)
)
CAPABILITY_BATCH_SIZE = HistogramMetric(
    "capserve_capability_batch_size",
    "Texts per capability runner batch.",
    ("capability",),
    BATCH_SIZE_BOUNDARIES,
)
CACHE_LOOKUPS = Metric(
    "capserve_cache_lookups_total",
    "Result cache lookups of distinct inputs, by result (hit or miss).",
    ("capability", "result"),
)
ENGINE_REQUESTS = Metric(
    "capserve_engine_requests_total",
    "Calls an engine replica answered, by entry point and request priority.",
    ("model", "method", "priority"),
)
ENGINE_BATCH_SIZE = HistogramMetric(
    "capserve_engine_batch_size",
    "Calls per engine batch (one @serve.batch).",
    ("model", "method"),
    BATCH_SIZE_BOUNDARIES,
)
ENGINE_QUEUE_DEPTH = Metric(
    "capserve_engine_queue_depth",
    "Calls inside an engine replica not yet answered (waiting for a batch or running).",
    ("model",),
)
ENGINE_TOKENS = Metric(
    "capserve_engine_tokens_total",
    "Tokens an engine processed, by kind (prompt or generation).",
    ("model", "kind"),
)
BATCH_LINES = Metric(
    "capserve_batch_lines_total",
    "Batch job lines checkpointed, by outcome (completed or failed).",
    ("outcome",),
)
BATCHES = Metric(
    "capserve_batches_total",
    "Batch jobs that ended, by status (completed, failed, cancelled, expired).",
    ("status",),
)
BATCHES_IN_PROGRESS = Metric(
    "capserve_batches_in_progress", "Batch jobs a batch runner replica is running now.", ()
)


@functools.cache
def counter(name: str, description: str, tag_keys: tuple[str, ...]) -> metrics.Counter:
    """The process's counter of `name`; also the `Resources.counter` factory of capabilities."""
    # Ray types tag_keys as `tuple[str]` (one key); it takes any number.
    return metrics.Counter(name, description=description, tag_keys=tag_keys)  # type: ignore[arg-type]


@functools.cache
def _gauge(metric: Metric) -> metrics.Gauge:
    return metrics.Gauge(
        metric.name,
        description=metric.description,
        tag_keys=metric.tag_keys,  # type: ignore[arg-type] # see counter
    )


@functools.cache
def _histogram(metric: HistogramMetric) -> metrics.Histogram:
    return metrics.Histogram(
        metric.name,
        description=metric.description,
        boundaries=list(metric.boundaries),
        tag_keys=metric.tag_keys,  # type: ignore[arg-type] # see counter
    )


def count(metric: Metric, value: float, tags: dict[str, str]) -> None:
    # Ray refuses increments of 0, which many reports carry (no cache hits, no runs).
    if value > 0:
        counter(metric.name, metric.description, metric.tag_keys).inc(value, tags)


def observe(metric: HistogramMetric, value: float, tags: dict[str, str]) -> None:
    _histogram(metric).observe(value, tags)


def set_gauge(metric: Metric, value: float, tags: dict[str, str]) -> None:
    _gauge(metric).set(value, tags)


def http_method(method: str) -> str:
    """The method as a label; any other token a client sends is `other`, so labels stay few."""
    return method if method in HTTP_METHODS else OTHER


def record_http_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    method = http_method(method)
    count(HTTP_REQUESTS, 1, {"endpoint": endpoint, "method": method, "status": str(status)})
    observe(HTTP_REQUEST_DURATION, seconds, {"endpoint": endpoint, "method": method})


def record_capability_batch(capability: str, report: BatchReport, cache_consulted: bool) -> None:
    tags = {"capability": capability}
    count(CAPABILITY_RUNS, report.runs, tags)
    count(CAPABILITY_TEXTS, report.texts, tags)
    observe(CAPABILITY_BATCH_SIZE, report.texts, tags)
    if cache_consulted:
        count(CACHE_LOOKUPS, report.cache_hits, {**tags, "result": "hit"})
        count(CACHE_LOOKUPS, report.unique_texts - report.cache_hits, {**tags, "result": "miss"})


def record_engine_tokens(model: str, prompt: int, generation: int) -> None:
    count(ENGINE_TOKENS, prompt, {"model": model, "kind": "prompt"})
    count(ENGINE_TOKENS, generation, {"model": model, "kind": "generation"})
