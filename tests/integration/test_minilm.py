"""The real MiniLM through vLLM's pooling runner: embeddings and knn over real Banking77 rows."""

import csv
from pathlib import Path

import numpy as np
import psutil
import pytest

from capabilities.classification import ClassificationSettings, Classifier
from capabilities.examples import EmbeddingCache
from loadtests.process_usage import process_name
from tests.conftest import BANKING77
from tests.integration.conftest import minilm_config, started

pytestmark = pytest.mark.integration
INTENTS = ("card_arrival", "lost_or_stolen_card", "top_up_by_cash_or_cheque", "exchange_rate")


@pytest.fixture(scope="module")
def minilm():
    yield from started(minilm_config())


@pytest.fixture(scope="module")
def small_examples(tmp_path_factory) -> Path:
    """Forty real examples of four intents, and the held-out rows of the same intents."""
    with (BANKING77 / "examples.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in INTENTS]
    chosen = [
        row for intent in INTENTS for row in [r for r in rows if r["category"] == intent][:10]
    ]
    path = tmp_path_factory.mktemp("examples") / "examples.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(chosen)
    return path


def test_the_model_runs_inside_the_engine_core_with_no_worker_process_beside_it(minilm):
    # vLLM's CPU default is a worker process that busy-waits with the engine core between steps.
    names = [process_name(child) for child in psutil.Process().children(recursive=True)]
    assert "VLLM::EngineCore" in names
    assert "VLLM::Worker" not in names


async def test_embeddings_are_normalised_and_semantic(minilm):
    vectors = await minilm.embed(
        ["my card has not arrived", "I am still waiting for my card", "what is the exchange rate"]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


async def test_texts_longer_than_the_model_are_truncated_not_refused(minilm):
    vectors = await minilm.embed(["card " * 2000])
    assert vectors.shape == (1, 384)


async def test_knn_over_real_examples_classifies_held_out_queries(minilm, small_examples, tmp_path):
    settings = ClassificationSettings(
        strategy="knn",
        embedding_model="minilm",
        examples={"path": str(small_examples), "label_column": "category"},
        k=5,
    )
    classifier = Classifier(
        settings, embedder=minilm, generator=None, cache=EmbeddingCache(tmp_path)
    )
    await classifier.load()
    with (BANKING77 / "heldout.csv").open(newline="") as handle:
        heldout = [row for row in csv.DictReader(handle) if row["category"] in INTENTS]
    results = await classifier.classify([row["text"] for row in heldout])
    correct = sum(r.label == row["category"] for r, row in zip(results, heldout, strict=True))
    assert correct / len(heldout) >= 0.85
    assert all(0 < r.confidence <= 1 for r in results)
    assert list(tmp_path.glob("*.npy")), "example embeddings were not cached"


async def test_embeddings_count_prompt_tokens_with_the_models_tokenizer(minilm):
    from transformers import AutoTokenizer

    texts = ["my card has not arrived", "hi", "card " * 2000]
    embedded = await minilm.embeddings(texts)
    assert embedded.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(embedded.vectors, axis=1), 1.0, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(minilm_config().model)
    assert embedded.prompt_tokens[:2] == [len(tokenizer(text)["input_ids"]) for text in texts[:2]]
    assert embedded.prompt_tokens[2] == 256  # truncated to max_model_len
