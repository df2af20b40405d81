"""Reading and checking batch input files.

A file is checked whole before any line runs, so a batch either fails up front with every fault
named (line and field) or runs with lines that are all well formed. The body of a line is checked
later, when it runs: a bad body fails that line only, in the error file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from batchjobs.json_depth import DEFAULT_MAX_JSON_DEPTH, JsonTooDeepError, loads_within_depth
from batchjobs.schemas import BatchError, InputLine

MAX_REPORTED_ERRORS = 100


class InputChangedError(RuntimeError):
    """A checked input file no longer parses: it was changed under a running batch."""


@dataclass(frozen=True)
class NumberedLine:
    """A task of the batch: its 0-based index among tasks and its 1-based line in the file."""

    index: int
    line_number: int
    line: InputLine


@dataclass
class InputCheck:
    """What checking a file found: the task count, the model the lines name, and faults."""

    tasks: int = 0
    model: str | None = None
    errors: list[BatchError] = field(default_factory=list)
    more_errors: int = 0

    def add(self, error: BatchError) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)
        else:
            self.more_errors += 1

    @property
    def ok(self) -> bool:
        return not self.errors

    def reported_errors(self) -> list[BatchError]:
        if not self.more_errors:
            return self.errors
        summary = BatchError(
            code="too_many_errors",
            message=f"{self.more_errors} more faults are not listed; fix the ones above first",
        )
        return [*self.errors, summary]


def _parse(raw: bytes, line_number: int, max_depth: int) -> InputLine | BatchError:
    try:
        # The line wraps its body in one more object than the body would have online.
        data = loads_within_depth(raw, max_depth + 1)
    except JsonTooDeepError:
        return BatchError(
            code="invalid_json_line",
            message=f"line {line_number} nests arrays and objects deeper than {max_depth + 1} "
            f"levels (its body may nest {max_depth}); flatten it",
            line=line_number,
        )
    except ValueError as error:
        # Besides malformed JSON and bad UTF-8: integers past Python's 4300-digit limit.
        return BatchError(
            code="invalid_json_line",
            message=f"line {line_number} is not valid JSON: {error}",
            line=line_number,
        )
    if not isinstance(data, dict):
        return BatchError(
            code="invalid_json_line",
            message=f"line {line_number} must be a JSON object with custom_id, method, url, body",
            line=line_number,
        )
    try:
        return InputLine.model_validate(data)
    except ValidationError as error:
        issue = error.errors(include_url=False)[0]
        param = ".".join(str(part) for part in issue["loc"]) or None
        return BatchError(
            code="invalid_request",
            message=f"line {line_number}: {param}: {issue['msg']}",
            param=param,
            line=line_number,
        )


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as source:
        for line_number, raw in enumerate(source, start=1):
            if raw.strip():
                yield line_number, raw


def read_tasks(
    path: Path, start: int = 0, max_depth: int = DEFAULT_MAX_JSON_DEPTH
) -> Iterator[NumberedLine]:
    """The tasks of a checked file from task `start` on (blank lines are not tasks); `max_depth`
    is the one the file was checked with."""
    for index, (line_number, raw) in enumerate(_raw_lines(path)):
        if index < start:
            continue
        parsed = _parse(raw, line_number, max_depth)
        if isinstance(parsed, BatchError):
            raise InputChangedError(f"{path} changed after it was checked: {parsed.message}")
        yield NumberedLine(index=index, line_number=line_number, line=parsed)


def check_input(
    path: Path,
    endpoint: str,
    max_lines: int,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> InputCheck:
    """Checks every line against the batch's endpoint and the limits; a line's body may nest
    `max_depth` levels, as a request body may online."""
    check = InputCheck()
    size = path.stat().st_size
    if size > max_bytes:
        check.add(
            BatchError(
                code="file_too_large",
                message=f"the input file is {size} bytes; the limit is {max_bytes}",
            )
        )
        return check
    seen: dict[str, int] = {}
    for line_number, raw in _raw_lines(path):
        check.tasks += 1
        if check.tasks > max_lines:
            continue
        parsed = _parse(raw, line_number, max_depth)
        if isinstance(parsed, BatchError):
            check.add(parsed)
            continue
        for error in _line_errors(parsed, line_number, endpoint, seen):
            check.add(error)
        seen.setdefault(parsed.custom_id, line_number)
        model = parsed.body.get("model")
        if check.model is None and isinstance(model, str):
            check.model = model
    if check.tasks == 0:
        check.add(BatchError(code="empty_file", message="the input file has no lines"))
    if check.tasks > max_lines:
        check.add(
            BatchError(
                code="too_many_tasks",
                message=f"the input file has {check.tasks} lines; the limit is {max_lines}; "
                "split it into several batches",
            )
        )
    return check


def _line_errors(
    line: InputLine, line_number: int, endpoint: str, seen: dict[str, int]
) -> Iterator[BatchError]:
    if line.custom_id in seen:
        yield BatchError(
            code="duplicate_custom_id",
            message=f"custom_id {line.custom_id!r} on line {line_number} was already used on "
            f"line {seen[line.custom_id]}; custom_ids must be unique within a batch",
            param="custom_id",
            line=line_number,
        )
    if line.method != "POST":
        yield BatchError(
            code="invalid_method",
            message=f"line {line_number}: method is {line.method!r}; only POST is supported",
            param="method",
            line=line_number,
        )
    if line.url != endpoint:
        yield BatchError(
            code="mismatched_endpoint",
            message=f"line {line_number}: url is {line.url!r} but the batch's endpoint is "
            f"{endpoint!r}; every line must target the batch's endpoint",
            param="url",
            line=line_number,
        )
    if line.body.get("stream") is True:
        yield BatchError(
            code="stream_not_supported",
            message=f"line {line_number}: body.stream is true; batch lines cannot stream",
            param="body.stream",
            line=line_number,
        )
