"""The default app's Banking77 label tree over HTTP: paths with a probability per level, where
paths stop, and an alert rule naming a parent."""

import pytest

pytestmark = pytest.mark.e2e

SEED = "I still have not received my new card"


def classify(client, **body):
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_answers_carry_the_path_with_a_probability_per_level(client):
    [result] = classify(client, texts=[SEED])
    parent, leaf = result["path"]
    assert (parent["label"], leaf["label"]) == ("cards", "card_arrival")
    assert (result["label"], result["confidence"]) == (leaf["label"], leaf["score"])
    # A parent's probability is the sum of its intents': at least the leaf's.
    assert leaf["score"] <= parent["score"] <= 1
    under_cards = {"card_arrival", "card_delivery_estimate", "get_physical_card", "card_linking"}
    shown = sum(alt["score"] for alt in result["top_k"] if alt["label"] in under_cards)
    assert shown <= parent["score"] + 1e-6


def test_depth_and_min_confidence_stop_the_path(client):
    [leaf] = classify(client, texts=[SEED])
    [top] = classify(client, texts=[SEED], depth=1)
    assert [step["label"] for step in top["path"]] == ["cards"]
    assert (top["label"], top["confidence"]) == ("cards", leaf["path"][0]["score"])
    if leaf["confidence"] < 1:
        [unsure] = classify(client, texts=[SEED], min_confidence=leaf["confidence"] + 1e-6)
        assert unsure["label"] == "cards" and len(unsure["path"]) == 1
    [sure] = classify(client, texts=[SEED], min_confidence=leaf["confidence"])
    assert sure["label"] == "card_arrival"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"texts": ["ok"], "depth": 3}, 400, "depth: 3 is deeper than the label tree (2 levels)"),
        ({"texts": ["ok"], "depth": 0}, 422, "depth"),
        ({"texts": ["ok"], "min_confidence": 2}, 422, "min_confidence"),
        (
            {"texts": ["ok"], "depth": 1, "labels": ["fees", "fraud"]},
            400,
            "ad-hoc labels are flat",
        ),
    ],
)
def test_stops_that_cannot_apply_get_a_clear_4xx(client, body, status, says):
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_an_alert_rule_on_a_parent_fires_for_every_intent_under_it(client):
    texts = ["Why do I have to verify my identity?", "I can't verify my identity, it keeps failing"]
    results = classify(client, texts=texts, capabilities=["classification", "alerts"])
    for result in results:
        assert result["path"][0]["label"] == "identity_verification"
        rules = [alert["rule"] for alert in result["alerts"]]
        assert "identity_verification_question" in rules
    assert {result["label"] for result in results} <= {
        "why_verify_identity",
        "unable_to_verify_identity",
        "verify_my_identity",
    }
