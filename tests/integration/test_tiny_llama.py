"""A tiny random Llama built locally, served by the real vLLM generate runner."""

import pytest

from capabilities.classification import ClassificationSettings, Classifier
from loadtests.apps import tiny_llama_model
from tests.integration.conftest import started

pytestmark = pytest.mark.integration
LABELS = ["card_arrival", "card_linking", "lost_or_stolen_card", "top_up", "refund"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_path):
    yield from started(tiny_llama_model(tiny_llama_path))


async def test_choose_returns_only_allowed_labels_with_a_distribution(tiny_llama):
    prompts = [f"Text: query number {i} about my card\nLabel: " for i in range(12)]
    results = await tiny_llama.choose(prompts, LABELS)
    assert len(results) == len(prompts)
    for result in results:
        assert result.choice in LABELS
        assert set(result.probabilities) == set(LABELS)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0 <= p <= 1 for p in result.probabilities.values())


async def test_choose_works_for_labels_sharing_prefixes(tiny_llama):
    labels = ["card", "card_arrival", "card_arrival_delay"]
    [result] = await tiny_llama.choose(["Text: where is it\nLabel: "], labels)
    assert result.choice in labels
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


async def test_generate_json_follows_the_schema(tiny_llama):
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": LABELS}, "urgent": {"type": "boolean"}},
        "required": ["label", "urgent"],
        "additionalProperties": False,
    }
    results = await tiny_llama.generate_json(["Answer in JSON: ", "Another: "], schema)
    for result in results:
        assert set(result) == {"label", "urgent"}
        assert result["label"] in LABELS
        assert isinstance(result["urgent"], bool)


async def test_generative_strategy_classifies_with_the_real_engine(tiny_llama):
    settings = ClassificationSettings(
        strategy="generative", generative_model="tiny-llama", labels=LABELS, top_k=3
    )
    classifier = Classifier(settings, embedder=None, generator=tiny_llama)
    await classifier.load()
    results = await classifier.classify(
        ["my card never came", "refund please", "my card never came"]
    )
    assert [r.label in LABELS for r in results] == [True] * 3
    assert results[0] == results[2]
    assert all(r.top_k[0].label == r.label and len(r.top_k) <= 3 for r in results)
