"""The two ways `VLLMEngine.choose` decodes an answer: the sampling parameters each asks vLLM
for, and how each reads a completion back into a `ChoiceResult`.

One step needs the engine started with `logprobs_mode="processed_logprobs"`: vLLM then computes
log-probabilities after `allowed_token_ids` has masked the logits, so the top `len(allowed)` are
exactly the allowed tokens, normalised among themselves. Under the default raw mode they would be
the top tokens of the whole vocabulary, which need not include every allowed one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from capabilities.engine import ChoiceResult
from deployments.engine.choice_probabilities import (
    DecodeStep,
    StepAlternative,
    choice_distribution,
    one_step_distribution,
)
from deployments.engine.choice_tokens import ANSWER_SEPARATOR, Tokenizer, first_tokens
from deployments.http.errors import EngineOutputError


class ChoiceDecoder(Protocol):
    params: SamplingParams

    def result(self, completion: Any, choices: Sequence[str]) -> ChoiceResult:
        """The choice and distribution a finished `CompletionOutput` stands for."""
        ...


class OneStepDecoder:
    """One token, restricted to the answers' distinct first tokens, with all their
    log-probabilities."""

    def __init__(self, first_tokens: Sequence[int]) -> None:
        self._first_tokens = list(first_tokens)
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=1,
            allowed_token_ids=self._first_tokens,
            logprobs=len(self._first_tokens),
            # Token ids are all it reads; decoding each log-probability's token would be wasted.
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def result(self, completion: Any, choices: Sequence[str]) -> ChoiceResult:
        [position] = completion.logprobs
        logprobs = {token: logprob.logprob for token, logprob in position.items()}
        [taken] = completion.token_ids
        return ChoiceResult(
            choice=choices[self._first_tokens.index(taken)],
            probabilities=one_step_distribution(choices, self._first_tokens, logprobs),
            decoding="one_step",
        )


class MultiStepDecoder:
    """The answer decoded token by token under a structured-output choice grammar, with each
    step's top log-probabilities."""

    def __init__(
        self, answers: Sequence[str], max_logprobs: int, stop_token_ids: frozenset[int]
    ) -> None:
        self._spoken = [ANSWER_SEPARATOR + answer for answer in answers]
        self._stop_token_ids = stop_token_ids
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=max(len(answer) for answer in self._spoken) + 2,
            logprobs=max_logprobs,
            structured_outputs=StructuredOutputsParams(choice=self._spoken),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def result(self, completion: Any, choices: Sequence[str]) -> ChoiceResult:
        if completion.text not in self._spoken:
            raise EngineOutputError(
                f"structured choice decode returned {completion.text!r}, not one of the choices"
            )
        steps = [
            DecodeStep(
                token_id=token_id,
                text=position[token_id].decoded_token or "",
                alternatives=[
                    StepAlternative(token_id=tid, text=lp.decoded_token or "", logprob=lp.logprob)
                    for tid, lp in position.items()
                    if lp.logprob > -math.inf
                ],
            )
            for token_id, position in zip(
                completion.token_ids, completion.logprobs or [], strict=False
            )
        ]
        mass = choice_distribution(self._spoken, steps, self._stop_token_ids)
        by_answer = dict(zip(self._spoken, choices, strict=True))
        return ChoiceResult(
            choice=by_answer[completion.text],
            probabilities={by_answer[answer]: p for answer, p in mass.items()},
            decoding="multi_step",
        )


def choice_decoder(
    tokenizer: Tokenizer,
    cue: str,
    answers: tuple[str, ...],
    max_logprobs: int,
    stop_token_ids: frozenset[int],
) -> ChoiceDecoder:
    """One step where the answers start with distinct tokens after `cue` and their count is
    within `max_logprobs`; token by token otherwise."""
    firsts = first_tokens(tokenizer, cue, answers) if len(answers) <= max_logprobs else None
    if firsts is not None:
        return OneStepDecoder(firsts)
    return MultiStepDecoder(answers, max_logprobs, stop_token_ids)
