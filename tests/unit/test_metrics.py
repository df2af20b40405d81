"""Metric definitions and what gets recorded: the request timing middleware's route templates and
statuses, and the values each recorder hands to its instrument (fake instruments; outside Ray the
real ones record nothing)."""

from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.testclient import TestClient

from capabilities.batching import BatchReport
from deployments.http.api_docs import docs_routes
from deployments.http.auth import Authenticator
from deployments.http.ingress import build_http_app
from deployments.http.rate_limit import RateLimitConfig, RateLimiter
from deployments.http.request_timing import RequestObservation
from deployments.http.routes import ApiRoute
from deployments.telemetry import metrics


@dataclass
class FakeInstrument:
    records: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.records.append((value, tags or {}))

    observe = set = inc


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeInstrument]]:
    """Instruments by metric name, as the recorders create them."""
    instruments: dict[str, FakeInstrument] = {}

    def fake(metric: Any, *_: Any) -> FakeInstrument:
        name = metric if isinstance(metric, str) else metric.name
        return instruments.setdefault(name, FakeInstrument())

    monkeypatch.setattr(metrics, "counter", fake)
    monkeypatch.setattr(metrics, "_gauge", fake)
    monkeypatch.setattr(metrics, "_histogram", fake)
    yield instruments


def test_the_exported_names_are_the_ones_dashboards_use() -> None:
    defined = {
        value.name: (type(value).__name__, value.tag_keys)
        for value in vars(metrics).values()
        if isinstance(value, metrics.Metric)
    }

    assert defined == {
        "capserve_http_requests_total": ("Metric", ("endpoint", "method", "status")),
        "capserve_http_request_duration_seconds": ("HistogramMetric", ("endpoint", "method")),
        "capserve_capability_runs_total": ("Metric", ("capability",)),
        "capserve_capability_texts_total": ("Metric", ("capability",)),
        "capserve_capability_batch_size": ("HistogramMetric", ("capability",)),
        "capserve_cache_lookups_total": ("Metric", ("capability", "result")),
        "capserve_engine_requests_total": ("Metric", ("model", "method", "priority")),
        "capserve_engine_batch_size": ("HistogramMetric", ("model", "method")),
        "capserve_engine_queue_depth": ("Metric", ("model",)),
        "capserve_engine_tokens_total": ("Metric", ("model", "kind")),
        "capserve_batch_lines_total": ("Metric", ("outcome",)),
        "capserve_batches_total": ("Metric", ("status",)),
        "capserve_batches_in_progress": ("Metric", ()),
    }
    assert metrics.LATENCY_BOUNDARIES_S[0] == 0.005 and metrics.LATENCY_BOUNDARIES_S[-1] == 60


def test_instruments_are_made_once_per_process() -> None:
    first = metrics.counter("capserve_test_total", "A test counter.", ("a",))

    assert metrics.counter("capserve_test_total", "A test counter.", ("a",)) is first


def test_zero_increments_are_skipped(recorded: dict[str, FakeInstrument]) -> None:
    metrics.record_engine_tokens("minilm", prompt=12, generation=0)

    assert recorded["capserve_engine_tokens_total"].records == [
        (12, {"model": "minilm", "kind": "prompt"})
    ]


def test_a_request_counts_by_status_text_and_times_by_route(
    recorded: dict[str, FakeInstrument],
) -> None:
    metrics.record_http_request("/v1/classify", "POST", 503, 0.25)
    metrics.record_http_request("/v1/classify", "BREW", 405, 0.001)

    assert recorded["capserve_http_requests_total"].records == [
        (1, {"endpoint": "/v1/classify", "method": "POST", "status": "503"}),
        (1, {"endpoint": "/v1/classify", "method": "other", "status": "405"}),
    ]
    assert recorded["capserve_http_request_duration_seconds"].records[0] == (
        0.25,
        {"endpoint": "/v1/classify", "method": "POST"},
    )


@pytest.mark.parametrize("cache_consulted", [True, False])
def test_capability_batches(recorded: dict[str, FakeInstrument], cache_consulted: bool) -> None:
    report = BatchReport(calls=3, texts=10, unique_texts=8, runs=1, cache_hits=6)

    metrics.record_capability_batch("classification", report, cache_consulted)

    tags = {"capability": "classification"}
    assert recorded["capserve_capability_runs_total"].records == [(1, tags)]
    assert recorded["capserve_capability_texts_total"].records == [(10, tags)]
    assert recorded["capserve_capability_batch_size"].records == [(10, tags)]
    lookups = recorded.get("capserve_cache_lookups_total", FakeInstrument()).records
    expected = [(6, {**tags, "result": "hit"}), (2, {**tags, "result": "miss"})]
    assert lookups == (expected if cache_consulted else [])


class Observations:
    def __init__(self) -> None:
        self.starts = 0
        self.seen: list[RequestObservation] = []

    def started(self) -> None:
        self.starts += 1

    def finished(self, observation: RequestObservation) -> None:
        self.seen.append(observation)


@pytest.fixture
def observed() -> Iterator[tuple[TestClient, Observations]]:
    async def file(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["file_id"]})

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    routes = [
        ApiRoute("/v1/files/{file_id}", "GET", file, "A file", "public"),
        ApiRoute("/v1/boom", "POST", boom, "Fails", "public"),
    ]
    observations = Observations()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield

    app = build_http_app(
        routes,
        Authenticator([]),
        RateLimiter(RateLimitConfig()),
        observations,
        lifespan,
        pages=docs_routes("/openapi.json", "API"),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, observations


def test_requests_are_named_by_route_template_and_status(
    observed: tuple[TestClient, Observations],
) -> None:
    client, observations = observed

    assert client.get("/v1/files/file-123").status_code == 200
    assert client.get("/v1/files/file-456").status_code == 200
    assert client.delete("/v1/files/file-456").status_code == 405
    assert client.get("/nope/../etc/passwd").status_code == 404
    assert client.post("/v1/boom").status_code == 500
    # Pages outside the route table: a mount of files is one name, not one per file.
    assert client.get("/docs").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/docs/assets/favicon.png").status_code == 200

    assert [(o.endpoint, o.method, o.status) for o in observations.seen] == [
        ("/v1/files/{file_id}", "GET", 200),
        ("/v1/files/{file_id}", "GET", 200),
        ("/v1/files/{file_id}", "DELETE", 405),
        ("other", "GET", 404),
        ("/v1/boom", "POST", 500),
        ("/docs", "GET", 200),
        ("/docs/assets", "GET", 200),
        ("/docs/assets", "GET", 200),
    ]
    assert observations.starts == 8
    assert all(o.seconds >= 0 for o in observations.seen)
