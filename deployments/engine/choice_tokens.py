"""Which token the model's answer to a `choose` starts with, as it writes it after the prompt's
cue. Where every answer starts with a token of its own, one decode step scores them all.

Answers are tokenised in context (cue, separator, answer) rather than alone: tokenizers attach
the space to the word that follows it, and some (SentencePiece) mark a word's start, so an answer
tokenised by itself can start with another token than the one the model would write.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator, Sequence
from typing import Protocol

ANSWER_SEPARATOR = " "
"""What the model writes between the prompt's cue (e.g. `Label:`) and its answer."""


class Tokenizer(Protocol):
    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...


def first_tokens(tokenizer: Tokenizer, cue: str, answers: Sequence[str]) -> list[int] | None:
    """Each answer's first token after `cue`, where no two answers share one; else None."""
    context = tokenizer.encode(cue, add_special_tokens=False)
    firsts = []
    for answer in answers:
        tokens = _continuation(tokenizer, cue, context, answer)
        if tokens is None:
            return None
        firsts.append(tokens[0])
    return firsts if len(set(firsts)) == len(firsts) else None


def choice_keys(
    tokenizer: Tokenizer, cue: str, choices: Sequence[str], most: int
) -> list[str] | None:
    """Keys for `choices` where their own first tokens collide: the first candidates (A-Z, 0-9,
    AA-ZZ) the model writes after `cue` as one distinct token each. None where the choices need
    none, or where one step cannot score them (more than `most`, or too few keys)."""
    if len(choices) > most or first_tokens(tokenizer, cue, choices) is not None:
        return None
    context = tokenizer.encode(cue, add_special_tokens=False)
    keys: list[str] = []
    taken: set[int] = set()
    for key in _key_candidates():
        tokens = _continuation(tokenizer, cue, context, key)
        if tokens is not None and len(tokens) == 1 and tokens[0] not in taken:
            keys.append(key)
            taken.add(tokens[0])
            if len(keys) == len(choices):
                return keys
    return None


def _continuation(
    tokenizer: Tokenizer, cue: str, context: list[int], answer: str
) -> list[int] | None:
    """The tokens the answer adds after the cue's, or None where it merges into the cue's last
    token (then no token of the answer's own starts it)."""
    tokens = tokenizer.encode(cue + ANSWER_SEPARATOR + answer, add_special_tokens=False)
    if tokens[: len(context)] != context or len(tokens) == len(context):
        return None
    return tokens[len(context) :]


def _key_candidates() -> Iterator[str]:
    yield from string.ascii_uppercase
    yield from string.digits
    for pair in itertools.product(string.ascii_uppercase, repeat=2):
        yield "".join(pair)
