"""What `capserve classify` reads and writes: rows of CSV, JSON lines and plain text; a record
per row in JSON lines or CSV; and how far an output file says a run got."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from capserve.client import ItemResult
from capserve.rows import (
    Output,
    Row,
    RowError,
    RowsError,
    input_format,
    peek,
    read_rows,
)


def rows_of(text: str, fmt, **fields: str) -> list[Row]:
    return list(read_rows(io.StringIO(text), fmt, **fields))


def test_csv_rows_take_the_text_and_id_columns() -> None:
    text = 'ticket,body\nT1,"card, lost"\nT2,"two\nlines"\n'
    rows = rows_of(text, "csv", text_field="body", id_field="ticket")
    assert rows == [Row(1, "T1", "card, lost"), Row(2, "T2", "two\nlines")]
    with pytest.raises(RowsError, match="no column 'text'.*ticket, body.*--text-column"):
        rows_of(text, "csv")


def test_json_lines_are_objects_or_strings() -> None:
    text = '{"text": "a", "id": 7}\n\n"b"\n{"text": "c"}\n'
    assert rows_of(text, "jsonl") == [Row(1, "7", "a"), Row(2, None, "b"), Row(3, None, "c")]
    with pytest.raises(RowsError, match="line 2 is not JSON"):
        rows_of('"a"\n{oops\n', "jsonl")
    with pytest.raises(RowsError, match="line 1 .* string 'text'"):
        rows_of('{"body": "a"}\n', "jsonl")


def test_plain_lines_are_texts_and_blank_lines_are_not() -> None:
    assert rows_of("a\r\n\n  \nb\n", "lines") == [Row(1, None, "a"), Row(2, None, "b")]


@pytest.mark.parametrize(
    ("path", "first", "fmt"),
    [
        ("in.csv", "text", "csv"),
        ("in.jsonl", "x", "jsonl"),
        ("in.txt", "{", "lines"),
        ("-", '{"text": "a"}', "jsonl"),
        ("-", "hello", "lines"),
    ],
)
def test_the_format_is_the_files_name_or_its_first_line(path: str, first: str, fmt: str) -> None:
    assert input_format(path, first) == fmt


def test_peek_keeps_the_first_line() -> None:
    first, lines = peek(io.StringIO("a\nb\n"))
    assert first == "a\n" and list(lines) == ["a\n", "b\n"]


ROWS = [Row(1, "t1", "a"), Row(2, None, "b")]
OUTCOMES = [
    ItemResult(index=0, label="card_arrival", confidence=0.9, alerts=[{"rule": "r"}]),
    RowError("validation_error", "texts.0: empty"),
]


def test_json_lines_records_carry_row_id_and_everything_answered() -> None:
    records = Output("jsonl", ["classification", "alerts"]).records(ROWS, OUTCOMES)
    assert [json.loads(line) for line in records.splitlines()] == [
        {
            "row": 1,
            "id": "t1",
            "label": "card_arrival",
            "confidence": 0.9,
            "alerts": [{"rule": "r"}],
        },
        {"row": 2, "id": None, "error": {"code": "validation_error", "message": "texts.0: empty"}},
    ]


def test_csv_records_have_a_column_per_capability_and_one_for_errors() -> None:
    out = Output("csv", ["classification", "alerts"])
    assert out.header() == "row,id,label,confidence,alerts,error\n"
    assert out.records(ROWS, OUTCOMES).splitlines() == [
        '1,t1,card_arrival,0.9,"[{""rule"": ""r""}]",',
        "2,,,,,validation_error: texts.0: empty",
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_resume_point_counts_whole_records_and_cuts_a_half_written_one(
    tmp_path: Path, fmt
) -> None:
    out = Output(fmt, ["classification"])
    path = tmp_path / f"out.{fmt}"
    assert out.resume_point(path) == 0
    written = out.header() + out.records(ROWS, OUTCOMES)
    path.write_text(written + written.splitlines()[-1][:5])
    assert out.resume_point(path) == 2
    assert path.read_text() == written


def test_a_file_that_is_not_this_outputs_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"row": 1}\n{"row": 7}\n')
    with pytest.raises(RowsError, match="holds 2 records but its last is row 7"):
        Output("jsonl", []).resume_point(path)
    csv_path = tmp_path / "out.csv"
    csv_path.write_text("a,b\n1,2\n")
    with pytest.raises(RowsError, match="has the columns"):
        Output("csv", []).resume_point(csv_path)
