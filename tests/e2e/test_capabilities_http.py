"""The capability DAG over HTTP: recommendations, alerts and gates on the real engine."""

import asyncio
import time
import uuid

import httpx
import pytest
import yaml

from tests.e2e.api_keys import ADMIN_KEY, bearer

pytestmark = pytest.mark.e2e
ALL_THREE = ["classification", "recommendations", "alerts"]


def test_one_request_gets_label_recommendations_and_alerts_per_text(client):
    texts = ["I lost my card on the train yesterday", "How do I top up with Apple Pay?"]
    response = client.post("/v1/classify", json={"texts": texts, "capabilities": ALL_THREE})
    assert response.status_code == 200, response.text
    body = response.json()
    lost, top_up = body["results"]
    assert lost["label"] == "lost_or_stolen_card"
    assert lost["recommendations"] and all(0 <= a["score"] <= 1 for a in lost["recommendations"])
    assert {a["label"] for a in lost["recommendations"]} == {"lost_or_stolen_card"}
    assert "high" in {alert["severity"] for alert in lost["alerts"]}
    assert top_up["label"] == "apple_pay_or_google_pay"
    assert top_up["recommendations"]
    assert set(body["capability_versions"]) == set(ALL_THREE)


def test_each_item_gets_exactly_what_it_asked_for(client):
    items = [
        {"id": "plain", "text": "My card has not arrived yet"},
        {"id": "alerts-only", "text": "Someone stole my card", "capabilities": ["alerts"]},
        {"id": "recs", "text": "My card has not arrived yet", "capabilities": ["recommendations"]},
    ]
    response = client.post("/v1/classify", json={"items": items})
    assert response.status_code == 200, response.text
    plain, alerts_only, recs = response.json()["results"]
    # The default app's labels form a tree, so classification answers the label's path too.
    assert set(plain) == {"index", "id", "label", "confidence", "top_k", "path"}
    assert set(alerts_only) == {"index", "id", "alerts"}
    assert alerts_only["alerts"][0]["severity"] in {"high", "critical"}
    assert set(recs) == {"index", "id", "recommendations"}


def stats(client) -> dict:
    return client.get("/v1/stats").json()["capabilities"]


def runs(snapshot: dict, name: str) -> int:
    return snapshot.get(name, {}).get("runs", 0)


async def send_together(base_url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=bearer(ADMIN_KEY)) as http:
        return await asyncio.gather(*(http.post("/v1/classify", json=b) for b in bodies))


def test_the_seed_example_runs_three_capability_runs_not_five(client, base_url):
    # Fresh texts: an answer from the result cache would (rightly) make no run at all.
    fresh = uuid.uuid4().hex[:8]
    before = stats(client)
    responses = asyncio.run(
        send_together(
            base_url,
            [
                {
                    "texts": [f"I am still waiting for my card {fresh}"],
                    "capabilities": ["classification"],
                },
                {
                    "texts": [f"Which currencies can I hold? {fresh}"],
                    "capabilities": ["classification", "recommendations"],
                },
                {
                    "texts": [f"My card was stolen {fresh}"],
                    "capabilities": ["classification", "alerts"],
                },
            ],
        )
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    expected = {"classification": 1, "recommendations": 1, "alerts": 1}
    deadline = time.monotonic() + 10
    while True:  # the runners report to the stats deployment without waiting for it
        after = stats(client)
        deltas = {name: runs(after, name) - runs(before, name) for name in expected}
        if deltas == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert deltas == expected
    classification = after["classification"]
    assert classification["mean_batch_size"] > 0 and classification["unique_texts"] > 0


def test_gates_report_which_fired_and_which_were_cancelled(client):
    texts = ["my card number is 4111 1111 1111 1111 please check it", "What is my card's PIN?"]
    response = client.post("/v1/classify", json={"texts": texts, "capabilities": ["gates"]})
    assert response.status_code == 200, response.text
    shared, clean = [r["gates"] for r in response.json()["results"]]
    assert shared["blocked"] and shared["fired"] == "card_number_shared"
    assert shared["outcomes"]["card_number_shared"]["status"] == "fired"
    assert shared["outcomes"]["abusive_language"]["status"] in {"cancelled", "clear"}
    assert not clean["blocked"] and clean["fired"] is None
    assert {o["status"] for o in clean["outcomes"].values()} == {"clear"}


def test_capabilities_are_listed_with_dependencies_and_versions(client):
    response = client.get("/v1/capabilities")
    assert response.status_code == 200, response.text
    body = response.json()
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {"classification", "recommendations", "alerts", "gates"}
    assert cards["alerts"]["depends_on"] == ["classification"]
    assert cards["classification"]["default"] and not cards["gates"]["default"]
    assert all(len(card["settings_version"]) == 16 for card in cards.values())
    assert body["levels"] == [["classification", "gates"], ["alerts", "recommendations"]]


def test_an_unknown_capability_is_a_clear_400(client):
    response = client.post("/v1/classify", json={"texts": ["hi"], "capabilities": ["sentiment"]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "capabilities" and "sentiment" in error["message"]
    assert "classification" in error["message"]


def engine_actor_ids() -> set[str]:
    """Serve names each replica actor with its replica id; a restart would change the set."""
    import ray

    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "engine-minilm" in actor["name"]
    }


def test_alert_rules_reload_live_without_restarting_the_engine(client, serve_cluster, tmp_path):
    text = "Please tell me the exchange rate for yen"
    ask = {"texts": [text], "capabilities": ["alerts"]}
    before = client.post("/v1/classify", json=ask).json()
    assert before["results"][0]["alerts"] == []
    engines = engine_actor_ids()
    assert engines
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "yen_watch",
                        "severity": "medium",
                        "message": "yen question ({label})",
                        "when": {"text_matches": "(?i)\\byen\\b"},
                    }
                ]
            }
        )
    )
    original = serve_cluster.config
    changed = yaml.safe_load(yaml.safe_dump(original))
    # Inline capabilities run in the ingress and the batch runner: both get the new settings.
    changed["applications"][0]["deployments"] = [
        {"name": name, "user_config": {"alerts": {"rules_path": str(rules)}}}
        for name in ("Ingress", "batch-runner")
    ]
    serve_cluster.deploy(changed)
    try:
        deadline = time.monotonic() + 60
        while True:
            after = client.post("/v1/classify", json=ask).json()
            if after["capability_versions"]["alerts"] != before["capability_versions"]["alerts"]:
                break
            assert time.monotonic() < deadline, "the new alert rules never took effect"
            time.sleep(0.5)
        assert after["results"][0]["alerts"] == [
            {"rule": "yen_watch", "severity": "medium", "message": "yen question (exchange_rate)"}
        ]
        assert engine_actor_ids() == engines
    finally:
        serve_cluster.deploy(original)
        serve_cluster.wait_running()


def test_repeated_texts_come_from_the_cache(client):
    text = f"Where is my new card? {uuid.uuid4().hex[:8]}"
    first = client.post("/v1/classify", json={"texts": [text]}).json()
    before = stats(client)["classification"]
    second = client.post("/v1/classify", json={"texts": [text]}).json()
    assert second["results"][0]["label"] == first["results"][0]["label"]
    deadline = time.monotonic() + 10
    while stats(client)["classification"]["cache_hits"] == before["cache_hits"]:
        assert time.monotonic() < deadline, "the repeated text was not answered from the cache"
        time.sleep(0.2)
    after = stats(client)["classification"]
    assert after["runs"] == before["runs"] and after["cache_hit_rate"] > 0
