"""Budgets on the running apps: caps on what one request may ask for, and batch lines and ad-hoc
labels counted against their key's buckets, which the ingress and the batch runner share in
Redis."""

import json

import httpx
import openai
import pytest

from tests.e2e.api_keys import BUDGET_KEY, BUDGET_TEXTS, bearer
from tests.e2e.conftest import TEST_MAX_CHAT_TOKENS
from tests.e2e.test_batch_http import TERMINAL, jsonl, wait_until

pytestmark = pytest.mark.e2e
CARD = "I still have not received my new card"
LABELS = ["card_arrival", "exchange_rate", "refund"]


@pytest.fixture(scope="module")
def generative(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/generative/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def budget(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=BUDGET_KEY, max_retries=0)


def test_chat_max_tokens_are_capped(generative: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a long story."}]
    with pytest.raises(openai.BadRequestError) as refused:
        generative.chat.completions.create(
            model="tiny-llama", messages=messages, max_tokens=TEST_MAX_CHAT_TOKENS + 1
        )
    message = refused.value.body["message"]  # type: ignore[index]
    assert f"cap of {TEST_MAX_CHAT_TOKENS}" in message and "max_tokens" in message
    # Without max_tokens a completion stops at the cap, not at the model's context length.
    unset = generative.chat.completions.create(model="tiny-llama", messages=messages)
    assert unset.usage is not None and unset.usage.completion_tokens <= TEST_MAX_CHAT_TOKENS


def test_embeddings_inputs_are_capped(client: httpx.Client) -> None:
    answer = client.post("/v1/embeddings", json={"input": ["card"] * 257})
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["param"] == "input" and "the limit is 256 per request" in error["message"]
    assert client.post("/v1/embeddings", json={"input": ["card"] * 256}).status_code == 200


def test_ad_hoc_labels_count_as_texts_of_the_key(base_url: str) -> None:
    body = {"texts": [CARD, "What is the rate for euros?"], "labels": LABELS}
    answer = httpx.post(
        f"{base_url}/v1/classify", json=body, headers=bearer(BUDGET_KEY), timeout=60
    )
    assert answer.status_code == 413, answer.text
    message = answer.json()["error"]["message"]
    burst = BUDGET_TEXTS["burst"]
    assert f"5 texts in one request exceed this key's texts burst of {burst}" in message
    assert "ad-hoc label" in message


def test_batch_lines_take_from_their_keys_buckets(budget: openai.OpenAI, base_url: str) -> None:
    lines = [
        {"custom_id": "fits", "method": "POST", "url": "/v1/classify", "body": {"texts": [CARD]}},
        {
            "custom_id": "over",
            "method": "POST",
            "url": "/v1/classify",
            "body": {"texts": [CARD, "Why a fee?"], "labels": LABELS},
        },
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = budget.files.create(file=("budget.jsonl", content), purpose="batch")
    batch = budget.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
    )
    done = wait_until(budget, batch.id, lambda b: b.status in TERMINAL)  # type: ignore[arg-type]
    assert done.status == "completed", done
    [fits] = jsonl(budget.files.content(done.output_file_id).content)
    assert fits["custom_id"] == "fits" and fits["response"]["status_code"] == 200
    [over] = jsonl(budget.files.content(done.error_file_id).content)
    assert over["custom_id"] == "over" and over["response"]["status_code"] == 413
    assert "texts burst of 4" in over["response"]["body"]["error"]["message"]

    # The line's text came out of the bucket online requests use: a full burst no longer fits.
    full_burst = {"texts": [CARD] * BUDGET_TEXTS["burst"]}
    answer = httpx.post(
        f"{base_url}/v1/classify", json=full_burst, headers=bearer(BUDGET_KEY), timeout=60
    )
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
