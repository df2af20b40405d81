import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest

from capabilities.classification import (
    ClassificationSettings,
    Classifier,
    KnnIndex,
    LabelIndex,
    LabelSpec,
    generative_prompt,
)
from capabilities.errors import InvalidRequestError
from capabilities.examples import EmbeddingCache, ExamplesSource
from tests.fakes import FakeEngine

ROWS = [
    ("my card has not arrived yet", "card_arrival"),
    ("when will my new card arrive", "card_arrival"),
    ("card still not delivered", "card_arrival"),
    ("I lost my card yesterday", "lost_card"),
    ("someone stole my card", "lost_card"),
    ("my wallet and card were stolen", "lost_card"),
    ("how do I top up my account", "top_up"),
    ("top up with bank transfer", "top_up"),
    ("can I top up by cash", "top_up"),
]


@pytest.fixture()
def examples_csv(tmp_path: Path) -> Path:
    path = tmp_path / "examples.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "intent"])
        writer.writerows(ROWS)
    return path


def settings(examples_path: Path | None, **overrides) -> ClassificationSettings:
    base = {
        "strategy": "knn",
        "embedding_model": "fake",
        "k": 3,
        "examples": {"path": str(examples_path), "label_column": "intent"}
        if examples_path
        else None,
    }
    return ClassificationSettings.model_validate(base | overrides)


USE_FAKE = object()


async def loaded(config: ClassificationSettings, engine=USE_FAKE, generator=None, cache=None):
    embedder = FakeEngine() if engine is USE_FAKE else engine
    classifier = Classifier(config, embedder=embedder, generator=generator, cache=cache)
    await classifier.load()
    return classifier


async def test_knn_votes_for_the_nearest_examples(examples_csv):
    classifier = await loaded(settings(examples_csv))
    results = await classifier.classify(["my card has not arrived", "top up by bank transfer"])
    assert [r.label for r in results] == ["card_arrival", "top_up"]
    for result in results:
        assert 0 < result.confidence <= 1
        assert result.top_k[0].label == result.label
        assert result.top_k[0].score == pytest.approx(result.confidence)
        assert sum(alt.score for alt in result.top_k) == pytest.approx(1.0)


async def test_identical_texts_are_embedded_once_and_answered_in_order(examples_csv):
    engine = FakeEngine()
    classifier = await loaded(settings(examples_csv), engine)
    engine.embedded.clear()
    texts = ["someone stole my card", "top up by cash", "someone stole my card"]
    results = await classifier.classify(texts)
    assert engine.embedded == ["someone stole my card", "top up by cash"]
    assert [r.label for r in results] == ["lost_card", "top_up", "lost_card"]


async def test_example_embeddings_are_cached_on_disk(examples_csv, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    await loaded(settings(examples_csv), cache=cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    engine = FakeEngine()
    await loaded(settings(examples_csv), engine, cache=cache)
    assert not set(engine.embedded) & {text for text, _ in ROWS}


async def test_cache_is_keyed_by_file_content(examples_csv, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    await loaded(settings(examples_csv), cache=cache)
    with examples_csv.open("a", newline="") as handle:
        csv.writer(handle).writerow(["card never came", "card_arrival"])
    engine = FakeEngine()
    await loaded(settings(examples_csv), engine, cache=cache)
    assert "card never came" in engine.embedded


async def test_new_weights_under_the_same_name_embed_the_examples_again(examples_csv, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    await loaded(
        settings(examples_csv), FakeEngine("fake", identity="fake@old-weights"), cache=cache
    )
    swapped = FakeEngine("fake", identity="fake@new-weights")
    await loaded(settings(examples_csv), swapped, cache=cache)
    assert {text for text, _ in ROWS} <= set(swapped.embedded)
    same = FakeEngine("fake", identity="fake@new-weights")
    await loaded(settings(examples_csv), same, cache=cache)
    assert not set(same.embedded) & {text for text, _ in ROWS}


async def test_zero_shot_uses_label_names_of_the_examples(examples_csv):
    classifier = await loaded(settings(examples_csv))
    assert classifier.labels == ["card_arrival", "lost_card", "top_up"]
    [result] = await classifier.classify(["top up"], strategy="zero_shot")
    assert result.label == "top_up"
    assert result.strategy == "zero_shot"


async def test_ad_hoc_labels_run_zero_shot_and_are_cached():
    config = ClassificationSettings(
        strategy="zero_shot", embedding_model="fake", labels=[LabelSpec(name="a"), "b"]
    )
    engine = FakeEngine()
    classifier = await loaded(config, engine)
    labels = [LabelSpec(name="refund"), LabelSpec(name="greeting", description="hello hi")]
    [first] = await classifier.classify(["hello there"], labels=labels)
    assert first.label == "greeting"
    engine.embedded.clear()
    await classifier.classify(["refund please"], labels=labels)
    assert engine.embedded == ["refund please"]


async def test_requests_bringing_one_new_label_set_together_embed_it_once():
    config = ClassificationSettings(
        strategy="zero_shot", embedding_model="fake", labels=[LabelSpec(name="a"), "b"]
    )
    engine = FakeEngine()
    classifier = await loaded(config, engine)
    engine.embedded.clear()
    labels = [LabelSpec(name="refund"), LabelSpec(name="greeting")]
    await asyncio.gather(*(classifier.classify([f"text {i}"], labels=labels) for i in range(5)))
    assert engine.embedded.count("refund") == 1


async def test_ad_hoc_labels_with_knn_are_refused(examples_csv):
    classifier = await loaded(settings(examples_csv))
    with pytest.raises(InvalidRequestError, match="zero_shot"):
        await classifier.classify(
            ["x"], strategy="knn", labels=[LabelSpec(name="a"), LabelSpec(name="b")]
        )


async def test_ad_hoc_labels_must_be_a_real_set(examples_csv):
    classifier = await loaded(settings(examples_csv))
    with pytest.raises(InvalidRequestError, match="at least 2"):
        await classifier.classify(["x"], labels=[LabelSpec(name="a")])
    with pytest.raises(InvalidRequestError, match="unique"):
        await classifier.classify(["x"], labels=[LabelSpec(name="a"), LabelSpec(name="a")])


async def test_unconfigured_strategy_is_refused_with_the_available_ones(examples_csv):
    classifier = await loaded(settings(examples_csv))
    with pytest.raises(InvalidRequestError, match="available: knn, zero_shot"):
        await classifier.classify(["x"], strategy="generative")


async def test_generative_ranks_by_the_engine_distribution(examples_csv):
    generator = FakeEngine("gen")
    config = settings(
        examples_csv, strategy="generative", generative_model="gen", embedding_model=None
    )
    classifier = await loaded(config, engine=None, generator=generator)
    assert classifier.strategies == ["generative"]
    [result] = await classifier.classify(["top up my account"])
    assert result.label == "top_up"
    assert sum(alt.score for alt in result.top_k) == pytest.approx(1.0)
    assert result.decoding == "one_step"
    prompt = generator.chosen[0]
    assert prompt.startswith(config.instruction)
    assert prompt.endswith("Text: top up my account\nLabel:")
    # Keys are off by default: labels are answered by name.
    assert generator.keys_asked == []
    assert generator.keys_given == [None]


async def test_generative_lists_the_keys_the_engine_asks_for_and_asks_once_per_label_set(
    examples_csv,
):
    generator = FakeEngine("gen", keyed=True)
    config = settings(
        examples_csv,
        strategy="generative",
        generative_model="gen",
        embedding_model=None,
        answer_keys=True,
    )
    classifier = await loaded(config, engine=None, generator=generator)
    [first] = await classifier.classify(["top up my account"])
    await classifier.classify(["my card has not arrived"])
    ad_hoc = [LabelSpec(name="yes"), LabelSpec(name="no")]
    await classifier.classify(["top up"], strategy="generative", labels=ad_hoc)
    assert first.label == "top_up"
    assert [names for names, _ in generator.keys_asked] == [
        ["card_arrival", "lost_card", "top_up"],
        ["yes", "no"],
    ]
    assert generator.keys_given == [["K0", "K1", "K2"]] * 2 + [["K0", "K1"]]
    assert "\nK0. card_arrival\nK1. lost_card\nK2. top_up\n" in generator.chosen[0]


def test_generative_prompt_puts_the_static_part_first():
    labels = [LabelSpec(name="a", description="first"), LabelSpec(name="b")]
    one, two = (generative_prompt("Classify.", labels, text) for text in ("x", "y"))
    static = "Classify.\nLabels:\n- a: first\n- b\n\nText: "
    assert one.startswith(static) and two.startswith(static)
    assert one.endswith("\nText: x\nLabel:")


def test_generative_prompt_lists_keys_before_the_labels():
    labels = [LabelSpec(name="a", description="first"), LabelSpec(name="b")]
    prompt = generative_prompt("Classify.", labels, "x", keys=["A", "B"])
    assert prompt == (
        "Classify.\nLabels (answer with the key before the label):\nA. a: first\nB. b\n\n"
        "Text: x\nLabel:"
    )


def test_generative_prompt_shows_examples_answered_as_the_model_should_answer():
    labels = [LabelSpec(name="a"), LabelSpec(name="b")]
    examples = [("one", "b"), ("two", "a")]
    by_name = generative_prompt("Classify.", labels, "x", examples=examples)
    assert by_name == (
        "Classify.\nLabels:\n- a\n- b\n\n"
        "Text: one\nLabel: b\n\nText: two\nLabel: a\n\nText: x\nLabel:"
    )
    by_key = generative_prompt("Classify.", labels, "x", keys=["A", "B"], examples=examples)
    assert by_key.endswith("Text: one\nLabel: B\n\nText: two\nLabel: A\n\nText: x\nLabel:")


def test_knn_confidence_is_the_similarity_weighted_vote_share():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    index = KnnIndex(vectors, ["a", "a", "b"], k=3)
    [scores] = index.scores(np.array([[1, 0]], dtype=np.float32))
    assert scores[0] == pytest.approx((1 + 0.9) / (1 + 0.9 + 1e-6), rel=1e-4)


def test_zero_shot_scores_are_a_softmax_over_similarities():
    index = LabelIndex(np.eye(2, dtype=np.float32), ["a", "b"], temperature=0.5)
    [scores] = index.scores(np.array([[1, 0]], dtype=np.float32))
    assert scores.sum() == pytest.approx(1.0)
    assert scores[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy": "knn", "examples": None, "labels": ["a", "b"]}, "needs examples"),
        ({"strategy": "generative", "generative_model": None}, "needs generative_model"),
        ({"strategy": "zero_shot", "embedding_model": None}, "needs embedding_model"),
        ({"examples": None, "labels": None, "strategy": "zero_shot"}, "give labels or examples"),
        ({"labels": ["a", "a"]}, "unique"),
    ],
)
def test_settings_refuse_unservable_combinations(examples_csv, overrides, message):
    with pytest.raises(ValueError, match=message):
        settings(examples_csv, **overrides)


def test_examples_source_detects_jsonl(tmp_path):
    assert ExamplesSource(path=tmp_path / "x.jsonl").resolved_format == "jsonl"
    assert ExamplesSource(path=tmp_path / "x.csv").resolved_format == "csv"
