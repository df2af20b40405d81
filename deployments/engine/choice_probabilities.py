"""Turns the log-probabilities of a `choose` decode into a distribution over the choices.

One step (`one_step_distribution`): every choice starts with a token of its own and the step was
restricted to those tokens, so the softmax over their log-probabilities is the model's
distribution over the choices, exactly.

Several steps (`choice_distribution`), for choices that share their first tokens: the grammar mask
is applied to the logits before vLLM computes log-probabilities, so each step's top tokens are
exactly the tokens the grammar allows, normalised among themselves. Walking the decoded path,
every allowed alternative at a step carries the path's probability times its own onto the choices
it leads to. The decoded choice keeps the whole path; choices reached only off the path share
their branch's mass evenly (exact whenever choices part at distinct tokens, which the label sets
we serve do after at most a few tokens).
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence

from pydantic import BaseModel


def one_step_distribution(
    choices: Sequence[str], first_tokens: Sequence[int], logprobs: Mapping[int, float]
) -> dict[str, float]:
    """Softmax over each choice's first-token log-probability; renormalising makes the values
    sum to 1 despite float rounding, and makes a token missing from `logprobs` weigh nothing."""
    values = [logprobs.get(token, -math.inf) for token in first_tokens]
    top = max(values)
    weights = [math.exp(value - top) for value in values]
    total = sum(weights)
    return {choice: weight / total for choice, weight in zip(choices, weights, strict=True)}


class StepAlternative(BaseModel):
    token_id: int
    text: str
    logprob: float


class DecodeStep(BaseModel):
    """One generated position: the token taken, and the allowed alternatives with their
    log-probabilities."""

    token_id: int
    text: str
    alternatives: list[StepAlternative]


def choice_distribution(
    choices: Sequence[str], steps: Sequence[DecodeStep], stop_token_ids: Container[int]
) -> dict[str, float]:
    mass = dict.fromkeys(choices, 0.0)
    prefix, path_logprob = "", 0.0
    for step in steps:
        for alternative in step.alternatives:
            if alternative.token_id == step.token_id:
                continue
            reached = _choices_reached(choices, prefix, alternative, stop_token_ids)
            share = math.exp(path_logprob + alternative.logprob) / max(len(reached), 1)
            for choice in reached:
                mass[choice] += share
        taken = next((a for a in step.alternatives if a.token_id == step.token_id), None)
        path_logprob += taken.logprob if taken is not None else 0.0
        if step.token_id in stop_token_ids:
            break
        prefix += step.text
    if prefix in mass:
        mass[prefix] += math.exp(path_logprob)
    return _normalised(mass, prefix)


def _choices_reached(
    choices: Sequence[str],
    prefix: str,
    alternative: StepAlternative,
    stop_token_ids: Container[int],
) -> list[str]:
    if alternative.token_id in stop_token_ids:
        return [prefix] if prefix in choices else []
    extended = prefix + alternative.text
    return [choice for choice in choices if choice.startswith(extended)]


def _normalised(mass: Mapping[str, float], decoded: str) -> dict[str, float]:
    total = sum(mass.values())
    if total <= 0:
        return {choice: float(choice == decoded) for choice in mass}
    return {choice: value / total for choice, value in mass.items()}
