"""HTTP against the real app: the default MiniLM app (trained_head) and a generative app on a tiny
Llama."""

import asyncio
import csv

import httpx
import pytest

from loadtests.apps import GENERATIVE_LABELS
from tests.conftest import BANKING77
from tests.e2e.api_keys import ADMIN_KEY, bearer

pytestmark = pytest.mark.e2e


def test_the_seed_query_is_card_arrival(client):
    response = client.post(
        "/v1/classify", json={"texts": ["I still have not received my new card"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    [result] = body["results"]
    assert result["label"] == "card_arrival"
    assert 0.5 < result["confidence"] <= 1
    assert result["top_k"][0] == {"label": "card_arrival", "score": result["confidence"]}
    assert body["strategy"] == "trained_head" and body["model"] == "minilm"


def test_items_come_back_in_input_order_with_their_ids(client):
    items = [
        {"id": "a", "text": "I lost my card on the train"},
        {"id": "b", "text": "What is the exchange rate for euros?"},
        {"id": "c", "text": "I lost my card on the train"},
    ]
    response = client.post("/v1/classify", json={"items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["id"]) for r in results] == [(0, "a"), (1, "b"), (2, "c")]
    assert results[0]["label"] == results[2]["label"] == "lost_or_stolen_card"
    assert results[1]["label"] == "exchange_rate"


def test_request_id_is_honoured_and_returned(client):
    response = client.post(
        "/v1/classify", json={"texts": ["top up failed"]}, headers={"X-Request-ID": "trace-42"}
    )
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["id"] == "trace-42"
    generated = client.post("/v1/classify", json={"texts": ["top up failed"]})
    assert generated.headers["x-request-id"] == generated.json()["id"] != "trace-42"


def test_ad_hoc_labels_classify_zero_shot(client):
    response = client.post(
        "/v1/classify",
        json={
            "texts": ["My card was stolen yesterday", "How much does a transfer cost?"],
            "labels": [
                {"name": "security", "description": "lost or stolen card, fraud"},
                {"name": "fees", "description": "charges and costs of transfers"},
            ],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "zero_shot"
    assert [r["label"] for r in body["results"]] == ["security", "fees"]


def test_held_out_queries_are_mostly_right(client):
    with (BANKING77 / "heldout.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[::10]
    response = client.post("/v1/classify", json={"texts": [row["text"] for row in rows]})
    assert response.status_code == 200, response.text
    labels = [r["label"] for r in response.json()["results"]]
    hits = sum(label == row["category"] for label, row in zip(labels, rows, strict=True))
    accuracy = hits / len(rows)
    assert accuracy >= 0.8


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ('{"texts": []}', 422, "validation_error", "'texts' is empty"),
        (
            '{"texts": ["ok", 7]}',
            422,
            "validation_error",
            "texts.1: Input should be a valid string",
        ),
        ('{"texts": ["' + "x" * 2001 + '"]}', 422, "validation_error", "limit is 2000"),
        ('{"texts": [' + ",".join(['"a"'] * 257) + "]}", 422, "validation_error", "limit is 256"),
        ('{"texts": ["ok"', 400, "invalid_json", "not valid JSON"),
        ("", 400, "invalid_json", "body is empty"),
        ('{"texts": ["ok"], "strategy": "magic"}', 422, "validation_error", "strategy"),
        (
            '{"texts": ["ok"], "strategy": "generative"}',
            400,
            "invalid_request",
            "available: knn, zero_shot",
        ),
        ('{"texts": ["ok"], "labels": ["only"]}', 400, "invalid_request", "at least 2 labels"),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(client, body, status, code, says):
    response = client.post(
        "/v1/classify", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert says in error["message"]
    assert client.post("/v1/classify", json={"texts": ["hello"]}).status_code == 200


def test_oversized_body_is_refused(client):
    response = client.post("/v1/classify", content=b"{" + b" " * 2_000_001 + b"}")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_routes_and_methods_answer_json(client):
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/classify")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_health_readiness_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["engines"] == ["minilm"]
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["runner"]) for m in models["data"]] == [("minilm", "pooling")]


async def test_concurrent_requests_all_succeed(base_url):
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=bearer(ADMIN_KEY)) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    "/v1/classify",
                    json={"texts": [f"My new card still has not arrived after {i + 2} days"]},
                )
                for i in range(40)
            )
        )
    assert [r.status_code for r in responses] == [200] * 40
    assert {r.json()["results"][0]["label"] for r in responses} == {"card_arrival"}


def test_generative_app_answers_only_allowed_labels(client):
    response = client.post(
        "/generative/v1/classify",
        json={"texts": ["my card has not come", "I want a refund", "my card has not come"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "generative" and body["model"] == "tiny-llama"
    for result in body["results"]:
        assert result["label"] in GENERATIVE_LABELS
        assert result["top_k"][0]["label"] == result["label"]
        assert 0 <= result["confidence"] <= 1
    assert body["results"][0] == {**body["results"][2], "index": 0}


def test_generative_app_takes_ad_hoc_labels(client):
    response = client.post(
        "/generative/v1/classify",
        json={"texts": ["hello"], "labels": ["yes", "no", "maybe"]},
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["label"] in {"yes", "no", "maybe"}
    assert sum(alt["score"] for alt in result["top_k"]) == pytest.approx(1.0, abs=1e-3)


def test_one_over_long_prompt_fails_only_its_own_request(client):
    """Requests sent together coalesce in the ingress, the runner deployment and the engine; the
    one whose prompt is longer than the model's context fails alone, with its own 400."""
    # CJK characters: several byte-level tokens each, so ~2,000 of them pass the app's character
    # limit but not the tiny Llama's 1,024-token context.
    too_long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1990))
    texts = ["my card has not come", "I want a refund", too_long, "where is my money"] * 2

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=str(client.base_url), timeout=120, headers=bearer(ADMIN_KEY)
        ) as http:
            return await asyncio.gather(
                *(http.post("/generative/v1/classify", json={"texts": [t]}) for t in texts)
            )

    responses = asyncio.run(send_all())
    for text, response in zip(texts, responses, strict=True):
        if text == too_long:
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "context" in error["message"] or "length" in error["message"]
            assert "Traceback" not in error["message"]
        else:
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["label"] in GENERATIVE_LABELS
