"""A tiny random BERT sequence classifier served by vLLM's pooling runner (classify task)."""

import numpy as np
import pytest

from capabilities.classification import ClassificationSettings, Classifier
from loadtests.apps import tiny_bert_model
from tests.integration.conftest import started
from tests.tiny_bert import LABELS

pytestmark = pytest.mark.integration
TEXTS = [
    "my card has not arrived",
    "what is the exchange rate for euros today",
    "top up failed again",
    "lost my card",
]


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_path):
    yield from started(tiny_bert_model(tiny_bert_path))


def transformers_probabilities(path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    return torch.softmax(logits, dim=-1).numpy()


async def test_labels_are_the_checkpoints_id2label_in_id_order(tiny_bert):
    assert await tiny_bert.class_labels() == LABELS


async def test_logits_are_the_checkpoints_own(tiny_bert, tiny_bert_path):
    logits = await tiny_bert.classify(TEXTS)
    assert logits.shape == (len(TEXTS), len(LABELS))
    expected = transformers_probabilities(tiny_bert_path, TEXTS)
    served = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(served, expected, atol=1e-4)
    assert len({int(row.argmax()) for row in expected}) > 1, "the texts should disagree"


async def test_the_classifier_strategy_answers_with_the_checkpoints_labels(
    tiny_bert, tiny_bert_path
):
    settings = ClassificationSettings(strategy="classifier", classifier_model="tiny-bert", top_k=4)
    classifier = Classifier(settings, embedder=None, generator=None, sequence_classifier=tiny_bert)
    await classifier.load()
    assert classifier.labels == LABELS
    results = await classifier.classify(TEXTS)
    expected = transformers_probabilities(tiny_bert_path, TEXTS)
    for result, row in zip(results, expected, strict=True):
        assert result.strategy == "classifier"
        assert result.label == LABELS[int(row.argmax())]
        assert result.confidence == pytest.approx(float(row.max()), abs=1e-4)
        assert sum(alt.score for alt in result.top_k) == pytest.approx(1.0, abs=1e-6)


async def test_long_texts_are_truncated_and_readiness_classifies(tiny_bert):
    [row] = await tiny_bert.classify(["card " * 1000])
    assert row.shape == (len(LABELS),)
    await tiny_bert.ready()
