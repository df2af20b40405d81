"""Streamed /v1/classify on the real apps, through the Serve proxy the suite runs (HAProxy unless
CAPSERVE_SERVE_FLAGS turns it off): lines arrive as items complete, not all at the end; a failing
item is an error line while the others succeed; curl -N over HTTP/1.1 sees the same."""

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from loadtests.apps import GENERATIVE_LABELS
from tests.e2e.api_keys import ADMIN_KEY
from tests.e2e.conftest import TEST_BATCH_WAIT_S

pytestmark = pytest.mark.e2e

NDJSON = "application/x-ndjson"
# Two items need classification only; the first also needs recommendations, which start once its
# classification is done, in a coalescing batch of their own (TEST_BATCH_WAIT_S later).
MIXED = {
    "items": [
        {
            "id": "with-actions",
            "text": "I lost my card on the train",
            "capabilities": ["classification", "recommendations"],
        },
        {"id": "rate", "text": "What is the exchange rate for euros?"},
        {"id": "arrival", "text": "I still have not received my new card"},
    ]
}


def timed_lines(lines: Iterator[str]) -> list[tuple[float, dict]]:
    """Each line parsed, with when it was read."""
    return [(time.monotonic(), json.loads(line)) for line in lines if line]


def assert_streamed_incrementally(timed: list[tuple[float, dict]]) -> None:
    """The classification-only items came out first, and the item waiting on recommendations a
    coalescing round later: a proxy buffering the answer would deliver all lines at once."""
    by_id = {line["id"]: at for at, line in timed if "index" in line}
    first = max(by_id["rate"], by_id["arrival"])
    assert by_id["with-actions"] - first > TEST_BATCH_WAIT_S * 2 / 3, timed


def test_lines_arrive_as_items_complete_and_match_the_unstreamed_answer(client):
    with client.stream(
        "POST", "/v1/classify", json={**MIXED, "stream": True}, headers={"X-Request-ID": "s-1"}
    ) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"] == NDJSON
        timed = timed_lines(answer.iter_lines())
    assert_streamed_incrementally(timed)
    lines = [line for _, line in timed]
    *items, summary = lines
    assert summary == {
        "id": "s-1",
        "object": "classification.summary",
        "model": "minilm",
        "strategy": "trained_head",
        "priority": "normal",
        "capability_versions": summary["capability_versions"],
        "succeeded": 3,
        "failed": 0,
    }
    assert sorted(summary["capability_versions"]) == ["classification", "recommendations"]
    unstreamed = client.post("/v1/classify", json=MIXED).json()
    assert sorted(items, key=lambda item: item["index"]) == unstreamed["results"]
    assert unstreamed["capability_versions"] == summary["capability_versions"]


def test_the_accept_header_asks_for_a_stream(client):
    answer = client.post(
        "/v1/classify", json={"texts": ["top up failed"]}, headers={"Accept": NDJSON}
    )
    assert answer.headers["content-type"] == NDJSON
    result, summary = [json.loads(line) for line in answer.text.splitlines()]
    assert result["index"] == 0 and result["label"]
    assert summary["object"] == "classification.summary" and summary["succeeded"] == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"texts": [], "stream": True}, 422, "validation_error"),
        ({"texts": ["hi"], "stream": True, "capabilities": ["sentiment"]}, 400, "invalid_request"),
    ],
)
def test_a_bad_streamed_request_is_refused_before_streaming(client, body, status, code):
    answer = client.post("/v1/classify", json=body)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == code


def test_an_item_too_long_for_the_model_is_an_error_line_and_the_others_succeed(client):
    """The generative app runs its capabilities on a runner deployment: the over-long item's
    prompt fails in the engine, and only that item's line says so."""
    # CJK characters: several byte-level tokens each, past the tiny Llama's 1,024-token context.
    too_long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1990))
    texts = ["my card has not come", too_long, "I want a refund", "where is my money"]
    with client.stream(
        "POST", "/generative/v1/classify", json={"texts": texts, "stream": True}, timeout=120
    ) as answer:
        assert answer.status_code == 200, answer.read()
        *items, summary = [json.loads(line) for line in answer.iter_lines() if line]
    by_index = {item["index"]: item for item in items}
    assert sorted(by_index) == [0, 1, 2, 3]
    error = by_index.pop(1)
    assert error["status"] == 400 and error["error"]["code"] == "invalid_request"
    assert "context" in error["error"]["message"] or "length" in error["error"]["message"]
    assert "Traceback" not in error["error"]["message"]
    assert all(item["label"] in GENERATIVE_LABELS for item in by_index.values())
    assert summary["succeeded"] == 3 and summary["failed"] == 1
    assert summary["model"] == "tiny-llama" and summary["strategy"] == "generative"


def test_curl_n_reads_the_lines_as_they_come_over_http_1_1(base_url):
    curl = subprocess.Popen(
        [
            "curl",
            "-N",
            "--http1.1",
            "-sS",
            "--fail-with-body",
            "--dump-header",
            "/dev/stderr",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
            "-H",
            f"Accept: {NDJSON}",
            "-H",
            "Content-Type: application/json",
            "--data",
            json.dumps(MIXED),
            f"{base_url}/v1/classify",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert curl.stdout is not None and curl.stderr is not None
    timed = timed_lines(line.rstrip("\n") for line in curl.stdout)
    headers = curl.stderr.read().lower()
    assert curl.wait(timeout=60) == 0, headers
    assert headers.startswith("http/1.1 200")
    assert f"content-type: {NDJSON}" in headers and "transfer-encoding: chunked" in headers
    assert_streamed_incrementally(timed)
    assert timed[-1][1]["object"] == "classification.summary"
    assert {line["label"] for _, line in timed[:-1]} >= {"exchange_rate", "card_arrival"}
