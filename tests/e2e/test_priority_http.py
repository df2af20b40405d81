"""Request priority on the running app: what a request or its key asks for is what it runs at,
online and in batch lines, and the engine replica receives each call with its priority (vLLM,
which the app's engine runs with `scheduling_policy: priority`, is proven to honour it in
tests/integration/test_priority.py)."""

import uuid
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.batch_bench import job_file
from tests.e2e.api_keys import ADMIN_KEY, CAPPED_KEY, PAYING_KEY, bearer
from tests.e2e.test_batch_http import TERMINAL, jsonl, wait_until
from tests.e2e.test_stats_http import METRICS_TIMEOUT_S, eventually

pytestmark = pytest.mark.e2e


def classify(client: httpx.Client, key: str = ADMIN_KEY, **fields: Any) -> httpx.Response:
    text = f"I lost my card {uuid.uuid4().hex[:6]}"
    return client.post("/v1/classify", json={"texts": [text], **fields}, headers=bearer(key))


def test_a_request_runs_at_the_priority_it_asks_for(client: httpx.Client) -> None:
    for priority in ("high", "normal", "low"):
        response = classify(client, priority=priority)
        assert response.status_code == 200, response.text
        assert response.json()["priority"] == priority
    assert classify(client).json()["priority"] == "normal"


def test_a_capability_on_its_own_runner_runs_at_the_priority_asked_for(base_url: str) -> None:
    # The generative app's classification runs in a runner deployment (keys off there).
    for priority in ("high", "low"):
        response = httpx.post(
            f"{base_url}/generative/v1/classify",
            json={"texts": ["my card has not arrived"], "priority": priority},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["priority"] == priority


def test_a_keys_default_and_cap(client: httpx.Client) -> None:
    assert classify(client, PAYING_KEY).json()["priority"] == "high"
    assert classify(client, PAYING_KEY, priority="low").json()["priority"] == "low"
    assert classify(client, CAPPED_KEY, priority="normal").status_code == 200
    refused = classify(client, CAPPED_KEY, priority="high")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["param"] == "priority" and "up to 'normal'" in error["message"]


@pytest.mark.parametrize("value", ["urgent", 1, ["high"]])
def test_an_invalid_priority_is_refused_naming_the_choices(client: httpx.Client, value) -> None:
    response = classify(client, priority=value)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "priority" and "'high', 'normal' or 'low'" in error["message"]


def test_openai_endpoints_take_a_priority(client: httpx.Client, base_url: str) -> None:
    body = {"model": "minilm", "input": ["exchange rate today"], "priority": "high"}
    assert client.post("/v1/embeddings", json=body).status_code == 200
    assert client.post("/v1/embeddings", json={**body, "priority": "asap"}).status_code == 422
    chat = {
        "messages": [{"role": "user", "content": "my card has not arrived"}],
        "max_tokens": 4,
        "priority": "high",
    }
    answered = httpx.post(f"{base_url}/generative/v1/chat/completions", json=chat, timeout=60)
    assert answered.status_code == 200, answered.text
    assert client.post("/v1/embeddings", json=body, headers=bearer(CAPPED_KEY)).status_code == 403


def test_batch_lines_run_at_low_priority(base_url: str) -> None:
    sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0)
    asking_high = (
        b'{"custom_id": "high", "method": "POST", "url": "/v1/classify", '
        b'"body": {"texts": ["top up failed"], "priority": "high"}}\n'
    )
    upload = sdk.files.create(
        file=("lines.jsonl", job_file(["Where is my card?"], "line") + asking_high),
        purpose="batch",
    )
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "completed", done
    (output,) = jsonl(sdk.files.content(done.output_file_id).content)
    assert output["response"]["body"]["priority"] == "low"
    (error,) = jsonl(sdk.files.content(done.error_file_id).content)
    assert error["custom_id"] == "high" and error["response"]["status_code"] == 400
    assert "batch lines run at priority 'low'" in error["response"]["body"]["error"]["message"]


def engine_calls_by_priority(metrics_port: int) -> dict[str, float]:
    """The default app's engine calls so far, summed by the priority they came with."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ray_capserve_engine_requests_total" and (
                sample.labels.get("model") == "minilm"
            ):
                priority = sample.labels.get("priority", "")
                counts[priority] = counts.get(priority, 0.0) + sample.value
    return counts


def test_the_engine_receives_each_call_with_its_priority(
    client: httpx.Client, serve_cluster
) -> None:
    for priority in ("high", "normal", "low"):
        assert classify(client, priority=priority).status_code == 200

    def every_priority_counted() -> dict[str, float] | None:
        # Replicas export every 10 s.
        counts = engine_calls_by_priority(serve_cluster.metrics_port)
        return counts if {"high", "normal", "low"} <= counts.keys() else None

    eventually(
        every_priority_counted,
        METRICS_TIMEOUT_S,
        "engine calls of every priority",
        lambda: str(engine_calls_by_priority(serve_cluster.metrics_port)),
    )
