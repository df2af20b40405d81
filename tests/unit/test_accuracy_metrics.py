import pytest

from capabilities.label_tree import load_label_tree
from loadtests.accuracy import (
    expected_calibration_error,
    macro_f1,
    parent_quality,
    quality,
    selective_accuracy,
)
from tests.conftest import BANKING77


def test_macro_f1_averages_per_label_scores():
    assert macro_f1(["a", "a", "b"], ["a", "a", "b"]) == 1.0
    # a: p=1/2 r=1 f=2/3; b: p=0 r=0 f=0
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert expected_calibration_error([True, False], [0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([True, True], [0.5, 0.5]) == pytest.approx(0.5)


def test_ece_weighs_each_bin_by_its_share_of_answers():
    # Bin (0.9, 1]: 3 answers at 0.95, 2 right (gap 0.95 - 2/3); bin (0.2, 0.3]: 1 at 0.25, wrong.
    correct = [True, True, False, False]
    confidence = [0.95, 0.95, 0.95, 0.25]
    expected = 3 / 4 * abs(2 / 3 - 0.95) + 1 / 4 * 0.25
    assert expected_calibration_error(correct, confidence) == pytest.approx(expected)


def test_selective_accuracy_keeps_the_most_confident_share():
    correct = [True, False, True, True, False]
    confidence = [0.9, 0.1, 0.8, 0.7, 0.6]
    # 80% of 5 = 4 answers: 0.9, 0.8, 0.7 (right) and 0.6 (wrong); the 0.1 one is left out.
    assert selective_accuracy(correct, confidence, 0.8) == pytest.approx(3 / 4)
    assert selective_accuracy(correct, confidence, 1.0) == pytest.approx(3 / 5)
    assert selective_accuracy(correct, confidence, 0.01) == 1.0, "at least one answer counts"


def test_selective_accuracy_breaks_ties_by_order():
    assert selective_accuracy([False, True], [0.5, 0.5], 0.5) == 0.0


def test_quality_reports_every_figure():
    figures = quality(
        ["a", "b", "a", "b", "a"], ["a", "b", "b", "b", "a"], [0.9, 0.8, 0.3, 0.7, 0.6]
    )
    assert figures["accuracy"] == pytest.approx(4 / 5)
    assert figures["selective_accuracy"] == pytest.approx(1.0)
    assert set(figures) == {"accuracy", "macro_f1", "ece", "selective_accuracy"}


def test_parent_quality_scores_the_first_node_of_each_path_against_the_true_parent():
    tree, _ = load_label_tree(BANKING77 / "label_tree.yaml")
    truth = ["card_arrival", "top_up_failed", "exchange_rate"]
    results = [
        {"path": [{"label": "cards", "score": 0.9}, {"label": "card_linking", "score": 0.5}]},
        {"path": [{"label": "top_ups", "score": 0.8}]},
        {
            "path": [
                {"label": "transfers", "score": 0.6},
                {"label": "cancel_transfer", "score": 0.4},
            ]
        },
    ]
    figures = parent_quality(truth, results, tree)
    assert figures["parent_accuracy"] == pytest.approx(2 / 3)
    assert set(figures) == {f"parent_{key}" for key in quality(["a"], ["a"], [1.0])}
    assert parent_quality(truth, [{"label": "x"}] * 3, tree) == {}
