"""Checking batch input files: every fault named with its line, nothing run on a bad file."""

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from batchjobs.lines import check_input, read_tasks

ENDPOINT = "/v1/classify"


def line(custom_id: str, **changes: object) -> str:
    record = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"texts": ["x"]}}
    record.update(changes)
    return json.dumps(record)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "input.jsonl"
    path.write_text("".join(f"{text}\n" for text in lines))
    return path


def check(path: Path, max_lines: int = 100, max_bytes: int = 1 << 20):
    return check_input(path, ENDPOINT, max_lines, max_bytes)


def test_a_good_file_counts_its_tasks_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, line("a"), "", "   ", line("b", body={"texts": ["y"], "model": "m"}))
    result = check(path)
    assert result.ok and result.tasks == 2 and result.model == "m"
    tasks = list(read_tasks(path))
    assert [(t.index, t.line_number, t.line.custom_id) for t in tasks] == [(0, 1, "a"), (1, 4, "b")]
    assert [t.line.custom_id for t in read_tasks(path, start=1)] == ["b"]


def test_every_fault_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        line("a"),
        "{not json",
        line("a"),
        line("c", method="GET"),
        line("d", url="/v1/embeddings"),
        line("e", body={"texts": ["x"], "stream": True}),
        json.dumps({"custom_id": "f", "method": "POST", "url": ENDPOINT}),
        "[1, 2]",
    )
    result = check(path)
    found = {(error.code, error.line) for error in result.errors}
    assert found == {
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("invalid_method", 4),
        ("mismatched_endpoint", 5),
        ("stream_not_supported", 6),
        ("invalid_request", 7),
        ("invalid_json_line", 8),
    }
    missing_body = next(error for error in result.errors if error.line == 7)
    assert missing_body.param == "body"


def test_limits_on_lines_size_and_emptiness(tmp_path: Path) -> None:
    too_many = write(tmp_path, *(line(str(i)) for i in range(5)))
    assert [e.code for e in check(too_many, max_lines=4).errors] == ["too_many_tasks"]
    assert [e.code for e in check(too_many, max_bytes=10).errors] == ["file_too_large"]
    empty = write(tmp_path, "", "")
    assert [e.code for e in check(empty).errors] == ["empty_file"]


def test_a_flood_of_faults_is_summarised(tmp_path: Path) -> None:
    path = write(tmp_path, *("{bad" for _ in range(150)))
    result = check(path, max_lines=1000)
    reported = result.reported_errors()
    assert len(reported) == 101 and reported[-1].code == "too_many_errors"
    assert "50 more" in reported[-1].message


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_any_bytes_are_checked_without_raising(tmp_path_factory, raw_lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "input.jsonl"
    path.write_bytes(b"\n".join(raw_lines))
    result = check(path)
    assert result.ok == (result.tasks > 0 and not result.errors)
    if result.ok:
        assert len(list(read_tasks(path))) == result.tasks
