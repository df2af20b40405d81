"""Streamed classification: items run on their own plans and come out as they complete, a failing
item becomes its own error line, the summary comes last, and the HTTP answer is JSON Lines."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from capabilities.base import RunContext
from capabilities.batching import RunCall, RunFailure, RunReply
from capabilities.classification import Classification, LabelScore
from capabilities.errors import InvalidRequestError
from capabilities.plan import Plan, execute_per_item
from capabilities.recommendations import Recommendation, Recommendations
from capabilities.registry import Registry
from deployments.config import AppConfig, parse_app_config
from deployments.dag.capability_clients import CallOutcome
from deployments.dag.classify_service import ClassifyService
from deployments.http.ingress import Ingress
from deployments.http.openapi import openapi_document
from deployments.http.schemas import ClassifyRequest
from deployments.http.streaming import NDJSON, wants_stream
from tests.unit.test_dag import Child, EchoOptions, Upper
from tests.unit.test_guarded_handle import FakeHandle, echo

TOO_LONG = "a text longer than the model's context"


class FakeCapability:
    """Answers each call on its own, once `released` is set: classification by the text's first
    word (a call with TOO_LONG fails as an engine would fail it), recommendations one action."""

    def __init__(self, name: str, released: bool = True) -> None:
        self.name = name
        self.released = asyncio.Event()
        if released:
            self.released.set()
        self.calls: list[RunCall] = []

    async def run_many(self, calls: Sequence[RunCall]) -> list[CallOutcome]:
        self.calls += calls
        await self.released.wait()
        return [self._answer(call) for call in calls]

    def _answer(self, call: RunCall) -> RunReply:
        if TOO_LONG in call.texts:
            failure = RunFailure(kind="invalid_request", message=TOO_LONG, param="texts")
            return RunReply(failure=failure, version="v-" + self.name)
        if self.name == "classification":
            outputs: list[Any] = [classification(text.split()[0]) for text in call.texts]
        else:
            outputs = [
                Recommendations(
                    actions=[Recommendation(id="freeze", title="Freeze", score=0.9, label=c.label)]
                )
                for c in call.parents["classification"]
            ]
        return RunReply(outputs=outputs, version="v-" + self.name)

    async def describe(self) -> Any:
        raise NotImplementedError


def classification(label: str) -> Classification:
    return Classification(
        label=label, confidence=0.75, top_k=[LabelScore(label=label, score=0.75)], strategy="knn"
    )


@pytest.fixture(scope="module")
def config(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> AppConfig:
    app = yaml.safe_load((project_root / "serve_config.yaml").read_text())["applications"][0]
    args = copy.deepcopy(app["args"])
    args["cache_dir"] = str(tmp_path_factory.mktemp("stream-cache"))
    return parse_app_config(args)


def service_of(config: AppConfig, **capabilities: FakeCapability) -> ClassifyService:
    clients = {
        name: capabilities.get(name) or FakeCapability(name)
        for name in config.registry().depends_on
    }
    return ClassifyService(config, clients, batching=None)  # type: ignore[arg-type]


def request(**fields: Any) -> ClassifyRequest:
    return ClassifyRequest.model_validate(fields)


async def test_each_item_comes_out_when_its_own_capabilities_are_done():
    registry = Registry({"upper": (), "child": ("upper",)})
    child_may_run = asyncio.Event()
    upper, child = Upper(), Child()

    async def run(name, texts, parents, items):
        if name == "child":
            await child_may_run.wait()
        capability = upper if name == "upper" else child
        return await capability.run(texts, RunContext(parents=parents, options=EchoOptions()))

    plan = Plan.of(registry, [["child"], ["upper"], ["upper"]])
    items = execute_per_item(plan, ["a", "b", "c"], run)
    first, second = [await anext(items), await anext(items)]
    # Item 0 waits for `child`; items 1 and 2 needed only `upper`.
    assert sorted([first[0], second[0]]) == [1, 2]
    assert second[1] == {"upper": upper.output_model(value=second[1]["upper"].value)}
    child_may_run.set()
    index, outputs = await anext(items)
    assert index == 0 and sorted(outputs) == ["child"]  # type: ignore[arg-type]
    assert outputs["child"].value == "A>a"  # type: ignore[index]
    with pytest.raises(StopAsyncIteration):
        await anext(items)


async def test_a_failing_item_is_its_own_outcome_and_the_others_complete():
    registry = Registry({"upper": (), "child": ("upper",)})

    async def run(name, texts, parents, items):
        if texts == ["poison"]:
            raise InvalidRequestError("poison is refused", "texts")
        return await Upper().run(texts, RunContext(parents=parents, options=EchoOptions()))

    plan = Plan.of(registry, [["upper"]] * 3)
    outcomes = dict(
        [outcome async for outcome in execute_per_item(plan, ["a", "poison", "c"], run)]
    )
    assert isinstance(outcomes[1], InvalidRequestError)
    assert outcomes[0]["upper"].value == "A" and outcomes[2]["upper"].value == "C"  # type: ignore[index]


async def test_closing_the_stream_early_cancels_the_items_still_running():
    registry = Registry({"upper": ()})
    started: list[str] = []
    cancelled: list[str] = []

    async def run(name, texts, parents, items):
        started.append(texts[0])
        if texts == ["slow"]:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(texts[0])
                raise
        return await Upper().run(texts, RunContext(parents=parents, options=EchoOptions()))

    items = execute_per_item(Plan.of(registry, [["upper"]] * 2), ["fast", "slow"], run)
    assert (await anext(items))[0] == 0
    await items.aclose()
    await asyncio.sleep(0)
    assert started == ["fast", "slow"] and cancelled == ["slow"]


def test_an_items_plan_holds_only_what_it_needs():
    registry = Registry({"upper": (), "child": ("upper",), "other": ()})
    plan = Plan.of(registry, [["child"], ["other"]])
    first = plan.for_item(0)
    assert first.order == ["upper", "child"] and first.requested == [frozenset({"child"})]
    assert plan.for_item(1).order == ["other"] and plan.for_item(1).depends_on == {"other": ()}


async def test_lines_are_results_and_errors_as_items_complete_then_the_summary(config):
    recommendations = FakeCapability("recommendations", released=False)
    service = service_of(config, recommendations=recommendations)
    body = request(
        items=[
            {"id": "slow", "text": "card lost", "capabilities": ["recommendations"]},
            {"id": "fast", "text": "refund please"},
            {"id": "bad", "text": TOO_LONG},
        ]
    )
    lines = service.stream(body, "req-1", "normal")
    first = [(await anext(lines)).root for _ in range(2)]
    # The item waiting on recommendations has not come out; the other two have.
    assert recommendations.calls and not recommendations.released.is_set()
    by_id = {line.id: line.model_dump(mode="json") for line in first}  # type: ignore[union-attr]
    assert by_id["fast"] == {
        "index": 1,
        "id": "fast",
        "label": "refund",
        "confidence": 0.75,
        "top_k": [{"label": "refund", "score": 0.75}],
    }
    assert by_id["bad"] == {
        "index": 2,
        "id": "bad",
        "status": 400,
        "error": {
            "message": TOO_LONG,
            "type": "invalid_request_error",
            "param": "texts",
            "code": "invalid_request",
        },
    }
    recommendations.released.set()
    slow = (await anext(lines)).root.model_dump(mode="json")
    assert slow["index"] == 0 and slow["recommendations"][0]["label"] == "card"
    assert "label" not in slow  # it asked for recommendations only
    summary = (await anext(lines)).root.model_dump(mode="json")
    assert summary == {
        "id": "req-1",
        "object": "classification.summary",
        "model": "minilm",
        "strategy": "knn",
        "priority": "normal",
        "capability_versions": {
            "classification": "v-classification",
            "recommendations": "v-recommendations",
        },
        "succeeded": 2,
        "failed": 1,
    }
    with pytest.raises(StopAsyncIteration):
        await anext(lines)


async def test_each_item_is_its_own_call_so_one_failure_fails_one_item(config):
    classify = FakeCapability("classification")
    service = service_of(config, classification=classify)
    body = request(texts=["a b", TOO_LONG, "c d"])
    lines = [line.root async for line in service.stream(body, "req-2", "normal")]
    assert sorted(call.texts[0] for call in classify.calls) == sorted(body.all_texts())
    assert [
        getattr(line, "status", 200) for line in sorted(lines[:3], key=lambda line: line.index)
    ] == [  # type: ignore[union-attr]
        200,
        400,
        200,
    ]
    assert lines[-1].succeeded == 2 and lines[-1].failed == 1  # type: ignore[union-attr]


async def test_a_request_no_item_may_make_fails_before_the_first_line(config):
    service = service_of(config)
    with pytest.raises(InvalidRequestError, match="sentiment"):
        service.stream(request(texts=["a"], capabilities=["sentiment"]), "req-3", "normal")


async def test_every_item_failing_still_ends_with_a_summary(config):
    service = service_of(config)
    lines = [
        line.root async for line in service.stream(request(texts=[TOO_LONG]), "req-4", "normal")
    ]
    assert [type(line).__name__ for line in lines] == ["ItemError", "ClassifySummary"]
    assert lines[1].model_dump() | {"capability_versions": {}} == {  # type: ignore[union-attr]
        "id": "req-4",
        "object": "classification.summary",
        "model": None,
        "strategy": None,
        "priority": "normal",
        "capability_versions": {},
        "succeeded": 0,
        "failed": 1,
    }


@pytest.mark.parametrize(
    ("stream", "accept", "streams"),
    [
        (None, None, False),
        (True, None, True),
        (None, "application/x-ndjson", True),
        (None, "application/json, Application/X-NDJSON;q=0.9", True),
        (None, "*/*", False),
        (False, "application/x-ndjson", False),
    ],
)
def test_the_body_decides_and_else_the_accept_header(stream, accept, streams):
    assert wants_stream(stream, accept) is streams


@pytest.fixture(scope="module")
def http(config: AppConfig) -> TestClient:
    # The class serve.ingress wrapped, built without Ray, its classify service over fakes.
    ingress = Ingress.func_or_class.__bases__[0](config, {}, {}, FakeHandle(echo), None)
    ingress._classify = service_of(config)
    return TestClient(ingress.__serve_build_asgi_app__())


def test_http_streams_one_json_object_per_line(http: TestClient):
    body = {"texts": ["card lost", TOO_LONG, "refund please"], "stream": True}
    with http.stream("POST", "/v1/classify", json=body, headers={"X-Request-ID": "r-9"}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"] == NDJSON
        assert answer.headers["x-accel-buffering"] == "no"
        raw = answer.read()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 4
    lines = [json.loads(line) for line in raw.splitlines()]
    assert sorted(line["index"] for line in lines[:3]) == [0, 1, 2]
    [error] = [line for line in lines if "error" in line]
    assert error["index"] == 1 and error["status"] == 400
    assert lines[-1]["object"] == "classification.summary" and lines[-1]["id"] == "r-9"


def test_http_streams_when_the_accept_header_asks_and_the_body_does_not_say(http: TestClient):
    texts = {"texts": ["card lost"]}
    streamed = http.post("/v1/classify", json=texts, headers={"Accept": NDJSON})
    assert streamed.headers["content-type"] == NDJSON
    assert len(streamed.text.splitlines()) == 2
    plain = http.post("/v1/classify", json={**texts, "stream": False}, headers={"Accept": NDJSON})
    assert plain.headers["content-type"] == "application/json"
    assert plain.json()["results"][0]["label"] == "card"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"texts": [], "stream": True}, 422, "validation_error"),
        ({"texts": ["a"], "stream": "yes please"}, 422, "validation_error"),
        ({"texts": ["a"], "stream": True, "capabilities": ["sentiment"]}, 400, "invalid_request"),
    ],
)
def test_http_refuses_a_bad_streamed_request_with_plain_json(http, body, status, code):
    answer = http.post("/v1/classify", json=body)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == code


def test_the_document_shows_the_streamed_answer_beside_the_json_one(config: AppConfig):
    ingress = Ingress.func_or_class.__bases__[0](config, {}, {}, FakeHandle(echo), None)
    document = openapi_document(ingress.api_routes())
    ok = document["paths"]["/v1/classify"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", NDJSON}
    line = document["components"]["schemas"]["ClassifyStreamLine"]
    assert {ref["$ref"].rsplit("/", 1)[-1] for ref in line["anyOf"]} == {
        "ItemResult",
        "ItemError",
        "ClassifySummary",
    }
