"""Generative classification and chat completions on real weights, over HTTP: Gemma 3 270M (the
base model tests/gemma.py builds) as a third app at `/gemma`, added to the running session for
this module and removed after it, so its ~2.5 GiB are free for the rest of the session.

A base model follows a task it is shown: the instruction carries Banking77 examples of every
label (examples.csv) and each label a description. Each label's name starts with a token of its
own, so one decode step scores them all.
"""

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from capabilities.classification import LABEL_CUE, ClassificationSettings
from loadtests.apps import classifying_app, gemma_model
from loadtests.generative_accuracy import few_shot_examples
from tests.e2e.api_keys import ADMIN_KEY
from tests.e2e.conftest import ServeCluster

pytestmark = pytest.mark.e2e
MODEL = "gemma3-270m"
DESCRIPTIONS = {
    "card_arrival": "a new card has not arrived or been delivered yet",
    "lost_or_stolen_card": "the card was lost or stolen and should be blocked",
    "exchange_rate": "questions about currency exchange rates",
    "top_up_failed": "adding money (a top-up) to the account did not work",
}
LABELS = list(DESCRIPTIONS)
# One text per label, each answered right by a wide margin in a run on the engine alone.
OBVIOUS = {
    "My card still hasn't been delivered, when does it arrive?": "card_arrival",
    "Someone stole my wallet with my card in it.": "lost_or_stolen_card",
    "What is your exchange rate for euros today?": "exchange_rate",
    "My top-up did not work, the money was not added.": "top_up_failed",
}


def few_shot_instruction() -> str:
    """The default instruction followed by five examples per label, answered as the model
    should answer (the capability lists the labels after it)."""
    shots = few_shot_examples(LABELS, per_label=5)
    examples = "\n\n".join(f"Text: {text}\n{LABEL_CUE} {label}" for text, label in shots)
    default = ClassificationSettings.model_fields["instruction"].default
    return f"{default} Examples:\n\n{examples}\n"


@pytest.fixture(scope="module")
def gemma_app(serve_cluster: ServeCluster, gemma_path: Path) -> Iterator[str]:
    """The session's apps plus Gemma's at `/gemma`, with the session's API keys; yields the
    route prefix, and leaves the session's apps as they were."""
    original = serve_cluster.config
    template = original["applications"][0]
    cache_dir = template["args"]["cache_dir"]
    settings = {
        "strategy": "generative",
        "generative_model": MODEL,
        "labels": [{"name": name, "description": text} for name, text in DESCRIPTIONS.items()],
        "instruction": few_shot_instruction(),
        "top_k": len(LABELS),
    }
    app = classifying_app(template, "gemma", gemma_model(gemma_path), settings, cache_dir)
    # The session's keys, and the Redis their rate limits share between ingress and batch runner.
    app["args"] |= {name: template["args"][name] for name in ("auth", "rate_limits")}
    app["args"]["batch"] = {"dir": f"{cache_dir}/batches-gemma"}
    with_gemma = copy.deepcopy(original)
    with_gemma["applications"].append(app)
    serve_cluster.deploy(with_gemma)
    try:
        serve_cluster.wait_running()
        yield app["route_prefix"]
    finally:
        serve_cluster.deploy(original)
        serve_cluster.wait_running()


@pytest.fixture(scope="module")
def gemma_chat(base_url: str, gemma_app: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}{gemma_app}/v1", api_key=ADMIN_KEY, max_retries=0)


def test_generative_classification_scores_every_label_in_one_step(
    client: httpx.Client, gemma_app: str
) -> None:
    response = client.post(f"{gemma_app}/v1/classify", json={"texts": list(OBVIOUS)}, timeout=180)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["strategy"] == "generative" and body["model"] == MODEL
    for result, expected in zip(body["results"], OBVIOUS.values(), strict=True):
        assert result["decoding"] == "one_step"
        scores = {alternative["label"]: alternative["score"] for alternative in result["top_k"]}
        assert set(scores) == set(LABELS)
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)
        assert result["label"] == expected == max(scores, key=scores.__getitem__), result
        assert result["confidence"] == scores[expected]


def test_chat_completion_answers_in_gemmas_turn_format(gemma_chat: openai.OpenAI) -> None:
    completion = gemma_chat.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "My card has not arrived. What should I do?"},
        ],
        max_tokens=16,
        temperature=0,
        timeout=180,
    )
    assert completion.object == "chat.completion" and completion.model == MODEL
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert usage is not None and 0 < usage.completion_tokens <= 16
    # <bos>, the turn markers and the system message folded into the user's turn.
    assert usage.prompt_tokens > 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_conversation_gemmas_template_refuses_is_a_400_saying_why(
    client: httpx.Client, gemma_app: str
) -> None:
    response = client.post(
        f"{gemma_app}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Hi"},
            ],
            "max_tokens": 4,
        },
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert f"model {MODEL!r}'s chat template refused the messages" in error["message"]
    assert "roles must alternate" in error["message"] and "Traceback" not in error["message"]


def test_the_gemma_app_asks_for_the_sessions_keys(base_url: str, gemma_app: str) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = httpx.post(f"{base_url}{gemma_app}/v1/chat/completions", json=chat, timeout=60)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
