import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deployments.engine.choice_probabilities import (
    DecodeStep,
    StepAlternative,
    choice_distribution,
    one_step_distribution,
)

EOS = 0


def step(taken: str, alternatives: dict[str, float], ids: dict[str, int]) -> DecodeStep:
    return DecodeStep(
        token_id=ids[taken],
        text="" if ids[taken] == EOS else taken,
        alternatives=[
            StepAlternative(
                token_id=ids[text], text="" if ids[text] == EOS else text, logprob=math.log(p)
            )
            for text, p in alternatives.items()
        ],
    )


IDS = {"</s>": EOS, "yes": 1, "no": 2, "card": 3, "_arrival": 4, "_linking": 5, "top_up": 6, "y": 7}


def test_distinct_first_tokens_give_the_first_step_distribution():
    steps = [step("yes", {"yes": 0.7, "no": 0.3}, IDS), step("</s>", {"</s>": 1.0}, IDS)]
    assert choice_distribution(["yes", "no"], steps, {EOS}) == pytest.approx(
        {"yes": 0.7, "no": 0.3}
    )


def test_shared_prefixes_are_split_at_the_branching_step():
    steps = [
        step("card", {"card": 0.6, "top_up": 0.4}, IDS),
        step("_arrival", {"_arrival": 0.75, "_linking": 0.25}, IDS),
        step("</s>", {"</s>": 1.0}, IDS),
    ]
    probabilities = choice_distribution(["card_arrival", "card_linking", "top_up"], steps, {EOS})
    assert probabilities == pytest.approx(
        {"card_arrival": 0.45, "card_linking": 0.15, "top_up": 0.4}
    )


def test_other_tokenisations_of_a_choice_add_to_it():
    steps = [step("yes", {"yes": 0.5, "y": 0.2, "no": 0.3}, IDS), step("</s>", {"</s>": 1.0}, IDS)]
    assert choice_distribution(["yes", "no"], steps, {EOS}) == pytest.approx(
        {"yes": 0.7, "no": 0.3}
    )


def test_a_choice_that_prefixes_another_gets_the_stop_mass():
    ids = {"</s>": EOS, "card": 3, "_arrival": 4}
    steps = [
        step("card", {"card": 1.0}, ids),
        step("_arrival", {"_arrival": 0.8, "</s>": 0.2}, ids),
        step("</s>", {"</s>": 1.0}, ids),
    ]
    assert choice_distribution(["card", "card_arrival"], steps, {EOS}) == pytest.approx(
        {"card": 0.2, "card_arrival": 0.8}
    )


def test_mass_outside_the_top_tokens_is_renormalised_away():
    steps = [step("yes", {"yes": 0.4, "no": 0.2}, IDS), step("</s>", {"</s>": 1.0}, IDS)]
    assert choice_distribution(["yes", "no"], steps, {EOS}) == pytest.approx(
        {"yes": 2 / 3, "no": 1 / 3}
    )


@given(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=2, max_size=6))
def test_any_first_step_distribution_sums_to_one(weights):
    choices = [f"label{i}" for i in range(len(weights))]
    ids = {choice: i + 1 for i, choice in enumerate(choices)} | {"</s>": EOS}
    total = sum(weights)
    steps = [
        step(choices[0], {c: w / total for c, w in zip(choices, weights, strict=True)}, ids),
        step("</s>", {"</s>": 1.0}, ids),
    ]
    probabilities = choice_distribution(choices, steps, {EOS})
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(0 <= p <= 1 for p in probabilities.values())


def test_one_step_is_the_softmax_over_the_first_tokens():
    probabilities = one_step_distribution(
        ["yes", "no"], [1, 2], {1: math.log(0.6), 2: math.log(0.4)}
    )
    assert probabilities == pytest.approx({"yes": 0.6, "no": 0.4})


def test_one_step_renormalises_over_the_allowed_tokens_only():
    # Log-probabilities over a larger vocabulary (here 0.3 + 0.1 of it) still give the ratio.
    logprobs = {1: math.log(0.3), 2: math.log(0.1), 3: math.log(0.6)}
    probabilities = one_step_distribution(["yes", "no"], [1, 2], logprobs)
    assert probabilities == pytest.approx({"yes": 0.75, "no": 0.25})


def test_one_step_gives_a_token_without_a_log_probability_nothing():
    probabilities = one_step_distribution(["a", "b", "c"], [1, 2, 3], {1: -0.1, 3: -2.4})
    assert probabilities["b"] == 0.0
    assert sum(probabilities.values()) == pytest.approx(1.0)


@given(st.lists(st.floats(min_value=-200.0, max_value=0.0), min_size=2, max_size=64))
def test_any_one_step_distribution_sums_to_one(logprobs):
    choices = [f"label{i}" for i in range(len(logprobs))]
    tokens = list(range(len(logprobs)))
    probabilities = one_step_distribution(choices, tokens, dict(zip(tokens, logprobs, strict=True)))
    assert list(probabilities) == choices
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert all(0 <= p <= 1 for p in probabilities.values())
