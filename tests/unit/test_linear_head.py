"""The trained_head strategy's head: the calibration split, the fit, the temperature, the bytes."""

import numpy as np
import pytest

from capabilities.linear_head import (
    HeadSettings,
    LinearHead,
    calibration_split,
    fit_linear_head,
    fit_temperature,
    softmax,
)


def clusters(
    labels: int, per_label: int, spread: float, seed: int = 0
) -> tuple[np.ndarray, list[str], list[str]]:
    """Unit vectors scattered around one random centre per label; texts are unique ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((labels, 32))
    rows = np.repeat(centres, per_label, axis=0) + spread * rng.standard_normal(
        (labels * per_label, 32)
    )
    vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    names = [f"label_{i // per_label}" for i in range(labels * per_label)]
    return vectors, [f"text {i}" for i in range(len(names))], names


def test_the_calibration_split_is_stratified_stable_and_keeps_a_row_per_label():
    texts = [f"text {i}" for i in range(23)]
    labels = ["a"] * 20 + ["b"] * 2 + ["c"]
    fit, calibration = calibration_split(texts, labels, 0.25)
    assert sorted(fit + calibration) == list(range(23))
    held = [labels[i] for i in calibration]
    assert (held.count("a"), held.count("b"), held.count("c")) == (5, 0, 0)
    # The same texts are held out whatever the order of the rows.
    order = list(reversed(range(23)))
    _, shuffled = calibration_split([texts[i] for i in order], [labels[i] for i in order], 0.25)
    assert {texts[order[i]] for i in shuffled} == {texts[i] for i in calibration}
    assert calibration_split(texts, labels, 0.0) == (list(range(23)), [])
    _, one_each = calibration_split(["x", "y"], ["a", "a"], 0.9)
    assert len(one_each) == 1, "a label keeps at least one row to fit on"


def test_the_fitted_temperature_recovers_the_one_labels_were_drawn_with():
    rng = np.random.default_rng(1)
    logits = 4 * rng.standard_normal((4000, 5))
    probabilities = softmax(logits / 2.5)
    targets = np.array([rng.choice(5, p=row) for row in probabilities])
    assert fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)


def test_a_head_fits_separable_labels_and_calibrates_on_held_out_rows():
    vectors, texts, labels = clusters(labels=4, per_label=50, spread=0.6)
    head = fit_linear_head(vectors, texts, labels, HeadSettings(calibration_share=0.2))
    assert head.names == ["label_0", "label_1", "label_2", "label_3"]
    scores = head.scores(vectors)
    assert scores.shape == (200, 4)
    assert np.allclose(scores.sum(axis=1), 1.0)
    predicted = [head.names[i] for i in scores.argmax(axis=1)]
    assert np.mean([p == t for p, t in zip(predicted, labels, strict=True)]) > 0.95
    assert head.temperature != 1.0


def test_without_a_calibration_slice_the_head_keeps_its_own_softmax():
    vectors, texts, labels = clusters(labels=3, per_label=10, spread=0.3)
    head = fit_linear_head(vectors, texts, labels, HeadSettings(calibration_share=0.0))
    assert head.temperature == 1.0


def test_two_labels_give_a_two_column_distribution():
    vectors, texts, labels = clusters(labels=2, per_label=20, spread=0.3)
    head = fit_linear_head(vectors, texts, labels, HeadSettings())
    scores = head.scores(vectors)
    assert scores.shape == (40, 2)
    assert [head.names[i] for i in scores.argmax(axis=1)] == labels


def test_a_head_survives_its_bytes():
    head = LinearHead(
        names=["a", "b"],
        weights=np.arange(6, dtype=np.float32).reshape(3, 2),
        bias=np.array([0.5, -0.5], dtype=np.float32),
        temperature=1.7,
    )
    again = LinearHead.from_bytes(head.to_bytes())
    queries = np.eye(3, dtype=np.float32)
    assert again.names == ["a", "b"]
    assert again.temperature == pytest.approx(1.7)
    assert np.allclose(again.scores(queries), head.scores(queries))
