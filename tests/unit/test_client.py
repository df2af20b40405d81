"""The Python client against a mock transport: typed answers, the headers every call carries,
typed errors, and which answers are tried again, when and for how long."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from capserve import client as client_module
from capserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    InvalidRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    ServerUnreachableError,
)
from capserve.tracing import TraceParent

Handler = Callable[[httpx.Request], httpx.Response]


def answer(request: httpx.Request) -> httpx.Response:
    texts = json.loads(request.content)["texts"]
    results = [
        {"index": i, "id": None, "label": "card_arrival", "confidence": 0.9, "alerts": []}
        for i in range(len(texts))
    ]
    return httpx.Response(
        200,
        json={
            "id": request.headers.get("x-request-id", "req_1"),
            "object": "classification.list",
            "model": "minilm",
            "strategy": "knn",
            "capability_versions": {"classification": "v1"},
            "results": results,
        },
    )


def refused(status: int, code: str, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"message": f"{code} says no", "type": "x", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


class Script:
    """Answers the calls in turn with the responses given, then with `answer`; records them."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.responses:
            next_one = self.responses.pop(0)
            if isinstance(next_one, Exception):
                raise next_one
            return next_one
        return answer(request)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", asleep)
    return slept


def client_of(script: Script, **retry: float) -> Client:
    return Client(
        "http://capserve",
        "sk-test",
        transport=httpx.MockTransport(script),
        retry=RetryPolicy(**retry),
    )


def test_classify_answers_typed_results_and_sends_key_request_id_and_traceparent() -> None:
    script = Script()
    with client_of(script) as client:
        response = client.classify(["a", "b"], capabilities=["alerts"], request_id="run-1")
    [request] = script.requests
    assert json.loads(request.content) == {"texts": ["a", "b"], "capabilities": ["alerts"]}
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["x-request-id"] == "run-1" and response.id == "run-1"
    assert TraceParent.parse(request.headers["traceparent"]) is not None
    first = response.results[0]
    assert (first.label, first.confidence, first.outputs) == ("card_arrival", 0.9, {"alerts": []})


def test_a_given_traceparent_is_sent_as_is() -> None:
    script = Script()
    trace = TraceParent.new()
    with client_of(script) as client:
        client.classify(["a"], traceparent=trace)
    assert script.requests[0].headers["traceparent"] == str(trace)


def test_429_and_503_are_tried_again_after_their_retry_after(waits: list[float]) -> None:
    script = Script(refused(429, "rate_limit_exceeded", "3"), refused(503, "not_ready", "2"))
    with client_of(script) as client:
        assert client.classify(["a"]).results[0].label == "card_arrival"
    assert len(script.requests) == 3
    assert 3 <= waits[0] <= 3.3 and 2 <= waits[1] <= 2.2


def test_a_wait_past_the_retry_time_is_the_error_itself(waits: list[float]) -> None:
    script = Script(refused(429, "rate_limit_exceeded", "600"))
    with client_of(script, timeout_s=60) as client, pytest.raises(RateLimitError) as raised:
        client.classify(["a"])
    assert raised.value.retry_after_s == 600 and raised.value.code == "rate_limit_exceeded"
    assert waits == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidRequestError),
        (422, InvalidRequestError),
        (401, AuthenticationError),
        (500, ServerError),
    ],
)
def test_a_refusal_is_raised_at_once_as_its_type(waits, status: int, error: type) -> None:
    script = Script(refused(status, "nope"))
    with client_of(script) as client, pytest.raises(error) as raised:
        client.classify(["a"])
    assert (raised.value.status_code, raised.value.code) == (status, "nope")
    assert "nope says no" in str(raised.value) and waits == [] and len(script.requests) == 1


def test_lost_answers_are_tried_again_for_calls_safe_to_repeat_only(waits: list[float]) -> None:
    lost = [httpx.ConnectError("refused"), refused(502, "bad_gateway")]
    script = Script(*lost)
    with client_of(script) as client:
        client.classify(["a"])
    assert len(script.requests) == 3 and waits[:2] == pytest.approx([0.5, 1.0], rel=0.1)
    # An upload is not repeated when its answer is lost: it may have been stored.
    script = Script(httpx.ReadTimeout("slow"))
    with client_of(script) as client, pytest.raises(ServerUnreachableError):
        client.upload_file(b"{}\n", "in.jsonl")
    assert len(script.requests) == 1


def test_a_service_that_stays_unreachable_is_reported_after_a_few_tries(waits) -> None:
    script = Script(*[httpx.ConnectError("refused")] * 10)
    with client_of(script, lost_tries=3) as client, pytest.raises(ServerUnreachableError) as raised:
        client.capabilities()
    assert len(script.requests) == 3 and "is the service running" in str(raised.value)


async def test_the_async_client_retries_the_same_way(waits: list[float]) -> None:
    script = Script(refused(503, "service_unavailable", "1"))
    async with AsyncClient("http://capserve", transport=httpx.MockTransport(script)) as client:
        response = await client.classify(["a", "b"])
    assert len(response.results) == 2 and len(script.requests) == 2 and 1 <= waits[0] <= 1.1


def test_limits_default_to_the_services_when_it_does_not_say() -> None:
    def listing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "data": [], "levels": []})

    with Client(transport=httpx.MockTransport(listing)) as client:
        assert client.capabilities().limits.max_items_per_request == 256
