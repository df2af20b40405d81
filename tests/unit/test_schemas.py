import pytest
from pydantic import ValidationError

from deployments.config import LimitsConfig
from deployments.errors import validation_error
from deployments.schemas import ClassifyRequest

LIMITS = LimitsConfig(max_items_per_request=3, max_text_chars=10)


def validate(payload: dict) -> ClassifyRequest:
    return ClassifyRequest.model_validate(payload, context={"limits": LIMITS})


def message_of(payload: object) -> str:
    with pytest.raises(ValidationError) as caught:
        validate(payload)  # type: ignore[arg-type]
    return validation_error(caught.value).message


def test_texts_and_items_both_work_and_keep_order():
    assert validate({"texts": ["b", "a"]}).all_texts() == ["b", "a"]
    request = validate({"items": [{"id": "x", "text": "b"}, {"text": "a"}]})
    assert request.all_texts() == ["b", "a"]
    assert request.all_ids() == ["x", None]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"texts": []}, "'texts' is empty"),
        ({"items": []}, "'items' is empty"),
        ({}, "give exactly one of 'texts'"),
        ({"texts": ["a"], "items": [{"text": "a"}]}, "give exactly one of 'texts'"),
        ({"texts": ["a", 3]}, "texts.1: Input should be a valid string"),
        ({"texts": ["   "]}, "texts[0] is empty or whitespace"),
        ({"texts": ["x" * 11]}, "texts[0] has 11 characters; the limit is 10"),
        ({"texts": ["a"] * 4}, "'texts' has 4 entries; the limit is 3"),
        (
            {"texts": ["a"], "strategy": "magic"},
            "strategy: Input should be 'knn', 'zero_shot' or 'generative'",
        ),
        ({"texts": ["a"], "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"items": [{"id": 1, "text": "a"}]}, "items.0.id: Input should be a valid string"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_bad_requests_say_what_is_wrong(payload, expected):
    assert expected in message_of(payload)
