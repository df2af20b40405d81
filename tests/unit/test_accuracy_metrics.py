import pytest

from loadtests.accuracy import expected_calibration_error, macro_f1


def test_macro_f1_averages_per_label_scores():
    assert macro_f1(["a", "a", "b"], ["a", "a", "b"]) == 1.0
    # a: p=1/2 r=1 f=2/3; b: p=0 r=0 f=0
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx(1 / 3)


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert expected_calibration_error([True, False], [0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([True, True], [0.5, 0.5]) == pytest.approx(0.5)
