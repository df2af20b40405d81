import string

import pytest

from deployments.engine.choice_tokens import choice_keys, first_tokens

CUE = "Label:"


class GreedyTokenizer:
    """Longest match first over a small vocabulary; every printable character is a token too."""

    def __init__(self, vocabulary: list[str]) -> None:
        tokens = sorted(set(vocabulary) | set(string.printable))
        self.ids = {token: i for i, token in enumerate(tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, at = [], 0
        while at < len(text):
            piece = max((token for token in self.ids if text.startswith(token, at)), key=len)
            ids.append(self.ids[piece])
            at += len(piece)
        return ids


TOKENIZER = GreedyTokenizer(
    ["Label", " card", "_arrival", "_linking", " top", "_up", " refund", " A", " C", " D"]
)


def test_first_tokens_are_the_answers_first_tokens_after_the_cue_and_a_space():
    ids = TOKENIZER.ids
    tokens = first_tokens(TOKENIZER, CUE, ["card_arrival", "top_up", "refund"])
    assert tokens == [ids[" card"], ids[" top"], ids[" refund"]]


def test_answers_sharing_a_first_token_have_none():
    assert first_tokens(TOKENIZER, CUE, ["card_arrival", "card_linking", "top_up"]) is None


def test_an_answer_merging_into_the_cue_has_none():
    # ": y" swallows the separator and the answer's first letter: no token of its own starts it.
    tokenizer = GreedyTokenizer(["Label", ": y", " no"])
    assert first_tokens(tokenizer, CUE, ["yes", "no"]) is None


def test_labels_with_distinct_first_tokens_need_no_keys():
    assert choice_keys(TOKENIZER, CUE, ["card_arrival", "top_up"], most=64) is None


def test_colliding_labels_get_the_first_single_token_keys():
    # " B" is two tokens (" ", "B") in this vocabulary, so it is skipped.
    labels = ["card_arrival", "card_linking", "top_up"]
    assert choice_keys(TOKENIZER, CUE, labels, most=64) == ["A", "C", "D"]


def test_no_keys_where_too_few_single_token_keys_exist():
    labels = ["card_arrival", "card_linking", "top_up", "refund"]
    assert choice_keys(TOKENIZER, CUE, labels, most=64) is None


def test_no_keys_for_more_labels_than_one_step_scores():
    labels = ["card_arrival", "card_linking", "top_up"]
    assert choice_keys(TOKENIZER, CUE, labels, most=2) is None


def test_keys_go_on_to_digits_and_letter_pairs():
    tokenizer = GreedyTokenizer(["Label", " card", " A", " 7", " AB"])
    labels = [f"card_{i}" for i in range(3)]
    assert choice_keys(tokenizer, CUE, labels, most=64) == ["A", "7", "AB"]


@pytest.mark.parametrize("cue", ["Label:", "Answer yes or no:"])
def test_colliding_labels_get_keys_after_any_cue(cue):
    tokenizer = GreedyTokenizer([" " + letter for letter in string.ascii_uppercase] + [" c"])
    keys = choice_keys(tokenizer, cue, ["card", "cart", "cat"], most=64)
    assert keys == ["A", "B", "C"]
