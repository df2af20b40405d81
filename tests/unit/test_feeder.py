"""The feeder against a mock service: requests within the service's limits, answers in input
order with a bounded number in flight, rows the service refuses isolated, waits honoured."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from capserve.client import AsyncClient, AuthenticationError, ItemResult, Limits
from capserve.feeder import BODY_OVERHEAD_BYTES, Feeder, Request, chunked
from capserve.rows import Row, RowError
from capserve.tracing import TraceParent

BAD = "bad text"


def rows(count: int, text: str = "t") -> list[Row]:
    return [Row(n, None, f"{text}{n}") for n in range(1, count + 1)]


class Service:
    """Labels each text with itself; refuses (422) any request holding BAD, answers the first
    `limited` requests 429, and records what it was sent and how much it had in flight."""

    def __init__(self, limited: int = 0, delay: bool = False, status: int = 422) -> None:
        self.limited = limited
        self.delay = delay
        self.status = status
        self.requests: list[httpx.Request] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        texts = json.loads(request.content)["texts"]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(random.uniform(0, 0.02))
        finally:
            self.in_flight -= 1
        if self.limited:
            self.limited -= 1
            return httpx.Response(429, headers={"Retry-After": "0"}, json={})
        if BAD in texts:
            error = {"message": f"texts.{texts.index(BAD)}: refused", "code": "validation_error"}
            return httpx.Response(self.status, json={"error": error})
        results = [{"index": i, "label": text} for i, text in enumerate(texts)]
        body = {"id": "r", "capability_versions": {}, "results": results}
        return httpx.Response(200, json=body)


def feeder_of(service: Service, concurrency: int = 3) -> tuple[Feeder, AsyncClient]:
    client = AsyncClient("http://capserve", transport=httpx.MockTransport(service))
    trace = TraceParent.new()
    return Feeder(client, Request(["classification"]), concurrency, trace, "run"), client


async def collect(feeder: Feeder, chunks: list[list[Row]]) -> list[tuple[Row, object]]:
    out = []
    async for chunk, outcomes in feeder.feed(chunks):
        out += list(zip(chunk, outcomes, strict=True))
    return out


def test_rows_are_split_at_the_item_limit_and_at_the_body_limit() -> None:
    limits = Limits(max_items_per_request=4, max_body_bytes=BODY_OVERHEAD_BYTES + 100)
    assert [len(c) for c in chunked(rows(10), limits, 1000)] == [4, 4, 2]
    assert [len(c) for c in chunked(rows(10), limits, 3)] == [3, 3, 3, 1]
    # 20 characters of two UTF-8 bytes each, quoted: 43 bytes a text; two fit in 100.
    wide = [Row(n, None, "é" * 20) for n in range(1, 6)]
    chunks = list(chunked(wide, limits, 1000))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [row.number for chunk in chunks for row in chunk] == [1, 2, 3, 4, 5]


async def test_answers_come_back_in_input_order_with_few_requests_in_flight() -> None:
    service = Service(delay=True)
    feeder, client = feeder_of(service, concurrency=3)
    async with client:
        fed = await collect(feeder, list(chunked(rows(50), Limits(), 4)))
    assert [row.number for row, _ in fed] == list(range(1, 51))
    assert all(isinstance(o, ItemResult) and o.label == row.text for row, o in fed)
    assert service.most_in_flight <= 3 and len(service.requests) == 13


async def test_every_request_names_its_rows_and_is_a_span_of_the_runs_trace() -> None:
    service = Service()
    feeder, client = feeder_of(service)
    async with client:
        await collect(feeder, list(chunked(rows(5), Limits(), 2)))
    assert [r.headers["x-request-id"] for r in service.requests] == [
        "run-r1-2",
        "run-r3-4",
        "run-r5-5",
    ]
    spans = [TraceParent.parse(r.headers["traceparent"]) for r in service.requests]
    assert len({span.trace_id for span in spans if span}) == 1
    assert len({span.span_id for span in spans if span}) == 3


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_refused_request_is_split_until_the_rows_at_fault_stand_alone(status: int):
    service = Service(status=status)
    feeder, client = feeder_of(service)
    chunk = rows(16)
    chunk[5] = Row(6, "six", BAD)
    async with client:
        fed = await collect(feeder, [chunk])
    assert [row.number for row, _ in fed] == list(range(1, 17))
    refused = [(row.number, o) for row, o in fed if isinstance(o, RowError)]
    assert refused == [(6, RowError("validation_error", "texts.0: refused"))]
    # The whole, then halves down to the row: 1 + 2 * log2(16) requests.
    assert len(service.requests) == 9


async def test_429s_are_waited_out_and_every_row_answered() -> None:
    service = Service(limited=4)
    feeder, client = feeder_of(service)
    async with client:
        fed = await collect(feeder, list(chunked(rows(6), Limits(), 2)))
    assert [row.number for row, _ in fed] == list(range(1, 7))
    assert len(service.requests) == 3 + 4


async def test_an_answer_that_is_not_about_rows_stops_the_feed() -> None:
    def no_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "no key", "code": "invalid_api_key"}})

    client = AsyncClient("http://capserve", transport=httpx.MockTransport(no_key))
    feeder = Feeder(client, Request(), 2, TraceParent.new(), "run")
    async with client:
        with pytest.raises(AuthenticationError):
            await collect(feeder, list(chunked(rows(10), Limits(), 2)))
