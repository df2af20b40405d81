"""Property tests of input validation: whatever arrives, batch-line checking answers its typed
result and the request models either accept or raise ValidationError, never anything else."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from batchjobs.lines import check_input, read_tasks
from batchjobs.schemas import BatchError
from deployments.config import LimitsConfig
from deployments.http.errors import BadRequestError, PayloadTooLargeError
from deployments.http.openai_api import ChatCompletionRequest, EmbeddingRequest
from deployments.http.schemas import ClassifyRequest

ENDPOINT = "/v1/classify"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Keys the request models read, so generated objects reach past the top-level checks.
FIELD_NAMES = sorted(
    {
        *ClassifyRequest.model_fields,
        *ChatCompletionRequest.model_fields,
        *EmbeddingRequest.model_fields,
        *("text", "id", "name", "description", "role", "content", "type", "json_schema"),
        *("schema", "custom_id", "method", "url", "body"),
    }
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "knn", "user", "text", "json_schema", "POST", ENDPOINT])
)
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=40,
)
json_objects = st.dictionaries(keys, json_values, max_size=8)
# Well-typed requests whose values stray out of range, so the valid path runs too; the type
# mismatches come from the arbitrary JSON drawn beside them.
numbers = st.integers(-3, 300) | st.floats(-1, 3, allow_nan=False, allow_infinity=False)
names = st.text(max_size=8)
texts = st.text(max_size=12)
classify_options = {
    "capabilities": st.lists(names, max_size=3),
    "labels": st.lists(names | st.fixed_dictionaries({"name": names}), max_size=3),
    "strategy": st.sampled_from(["knn", "zero_shot", "generative", "other"]),
}
classify_items = st.fixed_dictionaries(
    {"text": texts}, optional={"id": st.text(max_size=5), "capabilities": st.lists(names)}
)
classify_payloads = st.fixed_dictionaries(
    {"texts": st.lists(texts, max_size=5)}, optional=classify_options
) | st.fixed_dictionaries(
    {"items": st.lists(classify_items, max_size=5)}, optional=classify_options
)
messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "tool"]),
        "content": texts
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=2),
    }
)
chat_payloads = st.fixed_dictionaries(
    {"messages": st.lists(messages, max_size=3)},
    optional={
        "model": names,
        **dict.fromkeys(("max_tokens", "max_completion_tokens", "n", "seed"), st.integers(-3, 300)),
        **dict.fromkeys(("temperature", "top_p"), numbers),
        "stop": names | st.lists(names, max_size=3),
        "response_format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema"])},
            optional={"json_schema": st.fixed_dictionaries({"schema": json_objects})},
        ),
        "stream": st.booleans(),
    },
)
embedding_payloads = st.fixed_dictionaries(
    {"input": texts | st.lists(texts | st.integers(), max_size=4)},
    optional={
        "encoding_format": st.sampled_from(["float", "base64"]),
        "dimensions": st.integers(-3, 300),
    },
)


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file every example rewrites: a folder per example would cost more than the check."""
    return tmp_path_factory.mktemp("lines") / "input.jsonl"


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@FUZZ
@given(
    st.lists(
        st.binary(max_size=80)
        | json_values.map(lambda value: json.dumps(value).encode())
        | json_objects.map(lambda value: json.dumps(value).encode()),
        max_size=6,
    )
)
def test_any_line_is_checked_into_a_typed_result(input_file: Path, lines: list[bytes]) -> None:
    path = write_lines(input_file, [line.replace(b"\n", b" ") for line in lines])
    result = check_input(path, ENDPOINT, max_lines=100, max_bytes=1 << 20, max_depth=4)
    assert all(isinstance(error, BatchError) for error in result.reported_errors())
    assert all(error.line is None or 1 <= error.line <= len(lines) for error in result.errors)
    if result.ok:
        assert len(list(read_tasks(path, max_depth=4))) == result.tasks


@FUZZ
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "custom_id": st.text(min_size=1, max_size=40),
                "body": st.dictionaries(st.text(max_size=8), json_values, max_size=4).filter(
                    lambda body: body.get("stream") is not True
                ),
            }
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda line: line["custom_id"],
    )
)
def test_valid_lines_round_trip(input_file: Path, records: list[dict[str, Any]]) -> None:
    lines = [{**record, "method": "POST", "url": ENDPOINT} for record in records]
    encoded = [json.dumps(line).encode() for line in lines]
    path = write_lines(input_file, encoded)
    result = check_input(path, ENDPOINT, max_lines=100, max_bytes=1 << 20, max_depth=64)
    assert result.ok, result.errors
    tasks = list(read_tasks(path, max_depth=64))
    assert [task.line.model_dump() for task in tasks] == lines
    assert [task.line_number for task in tasks] == list(range(1, len(lines) + 1))


def validated(model: type[BaseModel], payload: Any, **context: Any) -> BaseModel | None:
    """The model of `payload`, or None when it is refused the one expected way."""
    try:
        return model.model_validate(payload, context=context or None)
    except ValidationError:
        return None


@FUZZ
@given(json_values | json_objects | classify_payloads)
def test_classify_requests_validate_or_raise_validation_error(payload: Any) -> None:
    limits = LimitsConfig(max_items_per_request=4, max_text_chars=10)
    request = validated(ClassifyRequest, payload, limits=limits)
    if isinstance(request, ClassifyRequest):
        texts = request.all_texts()
        assert 1 <= len(texts) <= 4 and all(text.strip() for text in texts)
        assert len(request.all_ids()) == len(request.requested_capabilities(["x"])) == len(texts)
        request.options()


@FUZZ
@given(json_values | json_objects | chat_payloads)
def test_chat_requests_validate_or_raise_validation_error(payload: Any) -> None:
    request = validated(ChatCompletionRequest, payload)
    if isinstance(request, ChatCompletionRequest):
        try:
            request.call(request.output_tokens(LimitsConfig().max_chat_tokens))
        except BadRequestError as error:
            assert error.param in ("max_tokens", "max_completion_tokens")


@FUZZ
@given(json_values | json_objects | embedding_payloads)
def test_embedding_requests_validate_or_raise_a_typed_error(payload: Any) -> None:
    request = validated(EmbeddingRequest, payload)
    if isinstance(request, EmbeddingRequest):
        try:
            texts = request.texts(LimitsConfig().max_items_per_request)
        except (BadRequestError, PayloadTooLargeError) as error:
            assert error.param == "input"
        else:
            assert texts and all(isinstance(text, str) for text in texts)
