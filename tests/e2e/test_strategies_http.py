"""The trained_head and classifier strategies through the deployed app: a head fitted on the
default app's examples at start-up and refitted on a live reload, and a sequence-classification
checkpoint (a tiny BERT built locally) served as an app of its own."""

import copy
import csv
import time

import pytest

from loadtests.apps import tiny_bert_model
from tests.conftest import BANKING77
from tests.tiny_bert import LABELS as CHECKPOINT_LABELS

pytestmark = pytest.mark.e2e
RELOAD_TIMEOUT_S = 120


def test_trained_head_classifies_with_a_distribution_over_the_intents(client):
    response = client.post(
        "/v1/classify",
        json={
            "texts": ["I still have not received my new card", "What is the exchange rate?"],
            "strategy": "trained_head",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "trained_head" and body["model"] == "minilm"
    assert [r["label"] for r in body["results"]] == ["card_arrival", "exchange_rate"]
    for result in body["results"]:
        assert result["top_k"][0] == {"label": result["label"], "score": result["confidence"]}
        assert 0 < sum(alt["score"] for alt in result["top_k"]) <= 1 + 1e-6


def test_ad_hoc_labels_with_trained_head_are_a_400_naming_the_fix(client):
    response = client.post(
        "/v1/classify",
        json={"texts": ["hi"], "strategy": "trained_head", "labels": ["yes", "no"]},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "labels" and "'zero_shot' or 'generative'" in error["message"]


def small_examples(path, extra_label: str, extra_texts: list[str]) -> None:
    """Ten real examples of three intents, and a label the default examples do not have."""
    intents = ("card_arrival", "exchange_rate", "top_up_failed")
    with (BANKING77 / "examples.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in intents]
    chosen = [
        (row["text"], intent)
        for intent in intents
        for row in [r for r in rows if r["category"] == intent][:10]
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows(chosen + [(text, extra_label) for text in extra_texts])


def test_a_live_reload_refits_the_head_on_the_new_examples(client, serve_cluster, tmp_path):
    ask = {"texts": ["Can I buy bitcoin with my balance?"], "strategy": "trained_head"}
    before = client.post("/v1/classify", json=ask).json()
    assert before["results"][0]["label"] != "crypto"
    examples = tmp_path / "examples.csv"
    small_examples(
        examples,
        "crypto",
        [
            "can I buy bitcoin here",
            "do you support crypto currencies",
            "I want to purchase ethereum",
            "how do I sell my bitcoin",
            "is cryptocurrency trading available",
        ],
    )
    original = serve_cluster.config
    changed = copy.deepcopy(original)
    settings = copy.deepcopy(changed["applications"][0]["args"]["capabilities"][0]["settings"])
    settings["examples"]["path"] = str(examples)
    settings.pop("label_tree", None)  # the new examples' labels are not the Banking77 tree's
    changed["applications"][0]["deployments"] = [
        {"name": name, "user_config": {"classification": settings}}
        for name in ("Ingress", "batch-runner")
    ]
    serve_cluster.deploy(changed)
    try:
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while True:
            after = client.post("/v1/classify", json=ask).json()
            versions = after.get("capability_versions", {})
            if versions.get("classification") != before["capability_versions"]["classification"]:
                break
            assert time.monotonic() < deadline, "the new examples never took effect"
            time.sleep(0.5)
        [result] = after["results"]
        assert result["label"] == "crypto" and after["strategy"] == "trained_head"
        assert {alt["label"] for alt in result["top_k"]} <= {
            "card_arrival",
            "exchange_rate",
            "top_up_failed",
            "crypto",
        }
    finally:
        serve_cluster.deploy(original)
        serve_cluster.wait_running()


def test_a_sequence_classification_checkpoint_serves_its_own_labels(
    client, serve_cluster, tiny_bert_path
):
    original = serve_cluster.config
    default = original["applications"][0]
    cache_dir = default["args"]["cache_dir"]
    classifier_app = {
        "name": "classifier",
        "route_prefix": "/classifier",
        "import_path": default["import_path"],
        "runtime_env": default["runtime_env"],
        "args": {
            "models": [tiny_bert_model(tiny_bert_path).model_dump(mode="json")],
            "capabilities": [
                {
                    "name": "classification",
                    "settings": {
                        "strategy": "classifier",
                        "classifier_model": "tiny-bert",
                        "top_k": 2,
                    },
                }
            ],
            "cache_dir": cache_dir,
            "batch": {"dir": f"{cache_dir}/batches-classifier"},
        },
    }
    with_classifier = copy.deepcopy(original)
    with_classifier["applications"].append(classifier_app)
    serve_cluster.deploy(with_classifier)
    try:
        serve_cluster.wait_running()
        ready = client.get("/classifier/readyz")
        assert ready.status_code == 200 and ready.json()["engines"] == ["tiny-bert"]
        response = client.post(
            "/classifier/v1/classify",
            json={"texts": ["my card has not arrived", "lost my card", "my card has not arrived"]},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["strategy"] == "classifier" and body["model"] == "tiny-bert"
        for result in body["results"]:
            assert result["label"] in CHECKPOINT_LABELS
            assert len(result["top_k"]) <= 2
            assert result["top_k"][0] == {"label": result["label"], "score": result["confidence"]}
        assert body["results"][0] == {**body["results"][2], "index": 0}
        refused = client.post("/classifier/v1/classify", json={"texts": ["x"], "strategy": "knn"})
        assert refused.status_code == 400
        assert "available: classifier" in refused.json()["error"]["message"]
    finally:
        serve_cluster.deploy(original)
        serve_cluster.wait_running()
