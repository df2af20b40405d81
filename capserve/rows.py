"""The rows `capserve classify` reads and the records it writes, one per row, in input order.

Input is CSV (a header row; the text in one column, an optional id in another), JSON lines (an
object per line with the text under a key, or a bare JSON string) or plain lines (one text per
non-blank line). Output is JSON lines or CSV. Because record n is row n's answer, an output file
says how far a run got: `resume_point` counts its complete records (cutting off a last line a
kill left half written), and the next run skips that many rows and appends.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from capserve.client import ItemResult

InputFormat = Literal["csv", "jsonl", "lines"]
OutputFormat = Literal["jsonl", "csv"]
INPUT_FORMATS: tuple[InputFormat, ...] = ("csv", "jsonl", "lines")
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("jsonl", "csv")


class RowsError(ValueError):
    """Input or output the command cannot use; the message says where and how to fix it."""


@dataclass(frozen=True)
class Row:
    number: int
    """1-based position among the input's texts (blank plain lines are not texts)."""
    id: str | None
    text: str


@dataclass(frozen=True)
class RowError:
    """Why the service refused a row (a refused row gets this instead of a result)."""

    code: str | None
    message: str


Outcome = ItemResult | RowError


def input_format(path: str, first_line: str) -> InputFormat:
    """The format a file's name says, or its first line for stdin and other names."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".txt":
        return "lines"
    return "jsonl" if first_line.lstrip().startswith(("{", '"')) else "lines"


def output_format(path: Path | None) -> OutputFormat:
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


def peek(stream: TextIO) -> tuple[str, Iterator[str]]:
    """The first line of `stream` and all of its lines, that one included (stdin cannot seek)."""
    first = stream.readline()
    return first, itertools.chain([first], stream)


def read_rows(
    lines: Iterable[str], fmt: InputFormat, text_field: str = "text", id_field: str = "id"
) -> Iterator[Row]:
    if fmt == "csv":
        return _csv_rows(lines, text_field, id_field)
    if fmt == "jsonl":
        return _jsonl_rows(lines, text_field, id_field)
    texts = (line.rstrip("\r\n") for line in lines)
    return (Row(n, None, text) for n, text in enumerate((t for t in texts if t.strip()), 1))


def _csv_rows(lines: Iterable[str], text_field: str, id_field: str) -> Iterator[Row]:
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    if text_field not in columns:
        raise RowsError(
            f"the CSV has no column {text_field!r} (its columns: {', '.join(columns) or 'none'}); "
            "name the text column with --text-column"
        )
    for number, record in enumerate(reader, 1):
        yield Row(number, record.get(id_field) or None, record[text_field] or "")


def _jsonl_rows(lines: Iterable[str], text_field: str, id_field: str) -> Iterator[Row]:
    number = 0
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise RowsError(f"line {line_number} is not JSON: {error.msg}") from None
        if isinstance(value, dict) and isinstance(value.get(text_field), str):
            row_id = value.get(id_field)
            text = value[text_field]
        elif isinstance(value, str):
            row_id, text = None, value
        else:
            raise RowsError(
                f"line {line_number} is neither a JSON string nor an object with a string "
                f"{text_field!r}; name the text key with --text-column"
            )
        number += 1
        yield Row(number, None if row_id is None else str(row_id), text)


def _record(row: Row, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, RowError):
        return {"row": row.number, "id": row.id, "error": vars(outcome)}
    fields = outcome.model_dump(mode="json", exclude={"index", "id"}, exclude_none=True)
    return {"row": row.number, "id": row.id, **fields}


class Output:
    """Records in JSON lines or CSV; CSV has a column per capability asked for besides
    classification (JSON), and `error` (code: message) for refused rows."""

    def __init__(self, fmt: OutputFormat, capabilities: Sequence[str]) -> None:
        self.format = fmt
        self._extra = [name for name in capabilities if name != "classification"]
        self.columns = ["row", "id", "label", "confidence", *self._extra, "error"]

    def header(self) -> str:
        return self._csv([self.columns]) if self.format == "csv" else ""

    def records(self, rows: Sequence[Row], outcomes: Sequence[Outcome]) -> str:
        records = [_record(row, outcome) for row, outcome in zip(rows, outcomes, strict=True)]
        if self.format == "jsonl":
            return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        return self._csv([self._csv_values(record) for record in records])

    def _csv_values(self, record: dict[str, Any]) -> list[Any]:
        error = record.get("error")
        return [
            record["row"],
            record["id"] or "",
            record.get("label", ""),
            record.get("confidence", ""),
            *(json.dumps(record[name]) if name in record else "" for name in self._extra),
            f"{error['code']}: {error['message']}" if error else "",
        ]

    @staticmethod
    def _csv(values: list[list[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(values)
        return buffer.getvalue()

    def resume_point(self, path: Path) -> int:
        """How many rows `path` already answers. A last line left half written is cut off
        (records are written whole and in order, so only the last can be); a file whose last
        record is not the row its position says is not this command's output, and is refused
        rather than appended to."""
        if not path.exists():
            return 0
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with path.open("r+b") as handle:
                handle.truncate(len(complete))
        text = complete.decode()
        if self.format == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            if rows and rows[0] != self.columns:
                raise RowsError(
                    f"{path} has the columns {rows[0]}, not {self.columns}: it is the output of "
                    "another command; write to a new file"
                )
            last: object = rows[-1][0] if len(rows) > 1 else None
            done = max(0, len(rows) - 1)
        else:
            lines = text.splitlines()
            last = _row_of(lines[-1]) if lines else None
            done = len(lines)
        if done and str(last) != str(done):
            raise RowsError(
                f"{path} holds {done} records but its last is row {last}: it is not the output "
                "of this input; write to a new file"
            )
        return done


def _row_of(line: str) -> object:
    try:
        return json.loads(line).get("row")
    except (json.JSONDecodeError, AttributeError):
        return None
