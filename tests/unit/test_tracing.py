"""W3C trace context: parsed and made as the recommendation says, carried with every capability
call of a request, named in the logs of a failed run, and recorded on a batch at its creation."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient

from batchjobs.files import FileStorage
from batchjobs.store_opener import StoreOpener
from capabilities.batching import RunCall, RunReply, run_batch
from capserve.client import AsyncClient
from capserve.tracing import TraceParent
from deployments.config import AppConfig, parse_app_config
from deployments.dag.classify_service import ClassifyService
from deployments.http.auth import Authenticator
from deployments.http.batch_api import BatchApi
from deployments.http.ingress import Ingress, build_http_app
from deployments.http.rate_limit import RateLimiter
from deployments.http.schemas import ClassifyRequest, ClassifyResponse
from tests.fakes import classified
from tests.unit.test_failure_isolation import Picky
from tests.unit.test_guarded_handle import FakeHandle, echo

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_traceparent_is_parsed_and_its_children_keep_the_trace() -> None:
    parsed = TraceParent.parse(f" {TRACE.upper()} ")
    assert parsed is not None and str(parsed) == TRACE
    child = parsed.child()
    assert (child.trace_id, child.flags) == (parsed.trace_id, parsed.flags)
    assert child.span_id != parsed.span_id and TraceParent.parse(str(child)) == child
    fresh = TraceParent.new()
    assert TraceParent.parse(str(fresh)) == fresh and fresh.trace_id != parsed.trace_id


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # an unknown version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # the invalid span id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # a short trace id
    ],
)
def test_a_traceparent_that_is_not_one_is_ignored(header: str | None) -> None:
    assert TraceParent.parse(header) is None


@pytest.fixture(scope="module")
def config(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> AppConfig:
    serve_config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args = copy.deepcopy(serve_config["applications"][0]["args"])
    args["cache_dir"] = str(tmp_path_factory.mktemp("tracing-cache"))
    return parse_app_config(args)


class Recording:
    """A capability client that answers every call with a label and keeps the calls."""

    def __init__(self) -> None:
        self.calls: list[RunCall] = []

    async def run_many(self, calls: Sequence[RunCall]) -> list[RunReply]:
        self.calls += calls
        return [
            RunReply(outputs=[classified("card_arrival")] * len(c.texts), version="v")
            for c in calls
        ]

    async def describe(self) -> Any:
        raise NotImplementedError


async def test_every_capability_call_of_a_request_carries_its_traceparent(config: AppConfig):
    recording = Recording()
    service = ClassifyService(config, {"classification": recording}, None)  # type: ignore[dict-item]
    answer = await service.classify(ClassifyRequest(texts=["a", "b"]), "req-1", TRACE)
    assert [result.label for result in answer.results] == ["card_arrival", "card_arrival"]
    assert [call.trace for call in recording.calls] == [TRACE]


class RecordingService:
    """The ingress's classify service, keeping the request id and trace of each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []

    async def classify(
        self, body: ClassifyRequest, request_id: str, trace: str | None = None
    ) -> ClassifyResponse:
        self.requests.append((request_id, trace))
        return ClassifyResponse(id=request_id, capability_versions={}, results=[])


def test_the_ingress_logs_a_requests_traceparent_and_hands_it_to_the_dag(
    config: AppConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The class serve.ingress wrapped: built without Ray, as the OpenAPI test builds it.
    ingress = Ingress.func_or_class.__bases__[0](config, {}, {}, FakeHandle(echo), None)
    service = RecordingService()
    monkeypatch.setattr(ingress, "_classify", service)
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    serve_logger = logging.getLogger("ray.serve")
    monkeypatch.setattr(serve_logger, "level", logging.INFO)
    serve_logger.addHandler(handler)
    try:
        with TestClient(ingress.__serve_build_asgi_app__()) as http:
            body = {"texts": ["a", "b"]}
            headers = {"traceparent": TRACE, "X-Request-ID": "req-9"}
            assert http.post("/v1/classify", json=body, headers=headers).status_code == 200
            ignored = {"traceparent": "00-junk", "X-Request-ID": "req-10"}
            assert http.post("/v1/classify", json=body, headers=ignored).status_code == 200
    finally:
        serve_logger.removeHandler(handler)
    assert service.requests == [("req-9", TRACE), ("req-10", None)]
    assert [line.getMessage() for line in lines] == [f"classify: 2 texts, traceparent {TRACE}"]


async def test_a_failed_run_is_logged_with_the_traceparents_of_its_callers(caplog):
    other = str(TraceParent.new())
    calls = [RunCall(texts=["engine down"], trace=TRACE), RunCall(texts=["x"], trace=other)]
    with caplog.at_level(logging.WARNING, logger="capserve.batching"):
        replies, _ = await run_batch(Picky(), calls)
    assert all(reply.failure is not None for reply in replies)
    [record] = caplog.records
    assert TRACE in record.getMessage() and other in record.getMessage()


@pytest.fixture
async def batch_client(config: AppConfig, tmp_path: Path):
    stores = StoreOpener(f"sqlite:///{tmp_path / 'jobs.db'}", retry_s=1)
    api = BatchApi(config, stores, FileStorage(tmp_path / "files"), wake_runner=lambda: None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield

    class NoObserver:
        def started(self) -> None: ...

        def finished(self, observation: Any) -> None: ...

    app = build_http_app(
        api.routes(), Authenticator([]), RateLimiter(config.rate_limits), NoObserver(), lifespan
    )
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://capserve", transport=transport) as client:
        yield client, transport
    await stores.close()


async def test_a_batch_runs_in_the_trace_of_the_request_that_created_it(batch_client) -> None:
    client, transport = batch_client
    upload = await client.upload_file(b'{"custom_id": "a"}\n', "in.jsonl")
    batch = await client.create_batch(upload.id, traceparent=TRACE)
    assert batch.traceparent == TRACE and (await client.batch(batch.id)).traceparent == TRACE
    # A creator that sends no traceparent starts a trace of its own for the batch.
    async with httpx.AsyncClient(transport=transport, base_url="http://capserve") as plain:
        created = await plain.post(
            "/v1/batches",
            json={
                "input_file_id": upload.id,
                "endpoint": "/v1/classify",
                "completion_window": "24h",
            },
        )
    assert TraceParent.parse(created.json()["traceparent"]) is not None
