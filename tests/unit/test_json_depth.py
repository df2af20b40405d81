"""The JSON nesting limit: request bodies and batch lines nested too deep are refused with an error
that names the limit, however deep they go, without RecursionError."""

import json
from pathlib import Path

import pytest
from starlette.requests import Request

from batchjobs.json_depth import JsonTooDeepError, loads_within_depth
from batchjobs.lines import check_input
from deployments.config import LimitsConfig
from deployments.http.errors import InvalidJsonError, api_error_for
from deployments.http.request_body import read_json

ENDPOINT = "/v1/classify"
VERY_DEEP = 100_000


def nested(depth: int, opening: str = "[", closing: str = "]", core: str = "") -> str:
    return opening * depth + core + closing * depth


def request_with(body: bytes) -> Request:
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return chunks.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


@pytest.mark.parametrize(
    ("text", "depth"),
    [("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[[", "{{{{"]', 1)],
)
def test_depth_is_the_nesting_of_arrays_and_objects(text: str, depth: int) -> None:
    assert loads_within_depth(text, depth) == json.loads(text)
    if depth:
        with pytest.raises(JsonTooDeepError):
            loads_within_depth(text.encode(), depth - 1)


@pytest.mark.parametrize("depth", [33, 900, 5_000, VERY_DEEP])
def test_deep_nesting_is_refused_without_recursion_error(depth: int) -> None:
    for opening, closing, core in (("[", "]", ""), ('{"a":', "}", "1")):
        with pytest.raises(JsonTooDeepError, match="deeper than the limit of 32 levels"):
            loads_within_depth(nested(depth, opening, closing, core).encode(), 32)


def test_unclosed_deep_nesting_is_refused_too() -> None:
    with pytest.raises(ValueError):
        loads_within_depth(b"[" * VERY_DEEP, 32)


async def test_a_deep_request_body_is_a_400_naming_the_limit() -> None:
    limits = LimitsConfig(max_json_depth=4)
    assert await read_json(request_with(b'{"texts": [["a"]]}'), limits) == {"texts": [["a"]]}
    for body in (nested(5), nested(VERY_DEEP)):
        with pytest.raises(JsonTooDeepError) as raised:
            await read_json(request_with(body.encode()), limits)
        answer = api_error_for(raised.value, "POST /")
        assert isinstance(answer, InvalidJsonError) and answer.status_code == 400
        assert "deeper than the limit of 4 levels; flatten it" in answer.message


async def test_a_huge_integer_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(InvalidJsonError, match="not valid JSON"):
        await read_json(request_with(b'{"seed": ' + b"9" * 5000 + b"}"), LimitsConfig())


def test_a_deep_batch_line_is_a_fault_of_that_line(tmp_path: Path) -> None:
    good = {"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {"texts": ["x"]}}
    deep = {**good, "custom_id": "b", "body": {"texts": json.loads(nested(3))}}
    path = tmp_path / "input.jsonl"
    path.write_text(f"{json.dumps(good)}\n{json.dumps(deep)}\n")
    assert check_input(path, ENDPOINT, 10, 1 << 30, max_depth=4).ok
    with path.open("a") as lines:
        lines.write('{"custom_id": ' + nested(VERY_DEEP) + "}\n")
    result = check_input(path, ENDPOINT, 10, 1 << 30, max_depth=3)
    assert [(error.code, error.line) for error in result.errors] == [
        ("invalid_json_line", 2),
        ("invalid_json_line", 3),
    ]
    assert all("line" in e.message and "may nest 3" in e.message for e in result.errors)
