import pytest

from loadtests.accuracy import expected_calibration_error, macro_f1, quality, selective_accuracy


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
