import pytest
from pydantic import ValidationError

from capabilities.classification import Classification, LabelScore
from deployments.config import LimitsConfig
from deployments.dag.classify_service import item_result
from deployments.http.errors import validation_error
from deployments.http.rate_limit import Usage
from deployments.http.schemas import ClassifyRequest

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
            "strategy: Input should be 'knn', 'zero_shot', 'generative', 'trained_head' "
            "or 'classifier'",
        ),
        ({"texts": ["a"], "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"items": [{"id": 1, "text": "a"}]}, "items.0.id: Input should be a valid string"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_bad_requests_say_what_is_wrong(payload, expected):
    assert expected in message_of(payload)


def test_a_result_says_how_generative_classification_decoded_and_only_then():
    top = [LabelScore(label="top_up", score=0.8)]
    generative = Classification(
        label="top_up", confidence=0.8, top_k=top, strategy="generative", decoding="one_step"
    )
    knn = Classification(label="top_up", confidence=0.8, top_k=top, strategy="knn")
    dumped = [
        item_result(0, None, {"classification": c}, {}).model_dump() for c in (generative, knn)
    ]
    assert dumped[0]["decoding"] == "one_step"
    assert "decoding" not in dumped[1]
    assert {key: value for key, value in dumped[0].items() if key != "decoding"} == dumped[1]


def test_ad_hoc_labels_have_a_cap_and_count_as_texts():
    limits = LimitsConfig(max_labels_per_request=3)
    labels = ["card", "fee", "transfer"]
    request = ClassifyRequest.model_validate(
        {"texts": ["a", "b"], "labels": labels}, context={"limits": limits}
    )
    # Each label is embedded (zero-shot) or prompted (generative) like a text.
    assert request.usage() == Usage(texts=5)
    assert ClassifyRequest.model_validate({"texts": ["a"]}).usage() == Usage(texts=1)
    with pytest.raises(ValidationError) as raised:
        ClassifyRequest.model_validate(
            {"texts": ["a"], "labels": [*labels, "refund"]}, context={"limits": limits}
        )
    assert (
        "'labels' has 4 entries; the limit is 3 per request"
        in validation_error(raised.value).message
    )
