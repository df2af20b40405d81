"""Labelled examples (CSV or JSONL) for the knn and trained_head strategies, with an on-disk
cache of their embeddings and of the heads fitted on them."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from capabilities.errors import ExamplesError
from capabilities.json_lines import json_lines
from capabilities.linear_head import HeadSettings, LinearHead


class ExamplesSource(BaseModel):
    """Where labelled examples live and which columns hold text and label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    text_column: str = "text"
    label_column: str = "label"
    format: str | None = Field(default=None, pattern="^(csv|jsonl)$")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        return "jsonl" if self.path.suffix in {".jsonl", ".ndjson"} else "csv"


class LabelledExamples(BaseModel):
    """Texts and their labels, in file order, plus the file digest the cache is keyed by."""

    texts: list[str]
    labels: list[str]
    digest: str


def load_examples(source: ExamplesSource) -> LabelledExamples:
    """Reads and checks an examples file; every problem names the file and what to fix."""
    if not source.path.is_file():
        raise ExamplesError(f"examples file {source.path} does not exist")
    raw = source.path.read_bytes()
    try:
        # utf-8-sig: spreadsheet exports often open with a byte order mark, which would
        # otherwise become part of the first column's name.
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ExamplesError(f"examples file {source.path} is not UTF-8: {error}") from None
    rows = _read_rows(source, content)
    if not rows:
        raise ExamplesError(f"examples file {source.path} has no rows")
    for column in (source.text_column, source.label_column):
        if column not in rows[0]:
            raise ExamplesError(
                f"examples file {source.path} has no column {column!r}; "
                f"columns are {sorted(rows[0])}"
            )
    texts, labels = [], []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(source.text_column), row.get(source.label_column)
        if not isinstance(text, str) or not text.strip() or not isinstance(label, str) or not label:
            raise ExamplesError(
                f"examples file {source.path}, row {number}: needs a non-empty text in "
                f"{source.text_column!r} and a label in {source.label_column!r}"
            )
        texts.append(text)
        labels.append(label)
    return LabelledExamples(texts=texts, labels=labels, digest=hashlib.sha256(raw).hexdigest())


def _read_rows(source: ExamplesSource, content: str) -> list[dict[str, object]]:
    if source.resolved_format == "csv":
        # The csv module finds the row ends itself (newline=""): a quoted field keeps its line
        # breaks, and U+2028 or U+0085 in a text (which str.splitlines splits at) stays in it.
        rows: list[dict[str, object]] = []
        try:
            rows.extend(csv.DictReader(io.StringIO(content, newline="")))
        except csv.Error as error:
            raise ExamplesError(
                f"examples file {source.path}, row {len(rows) + 1}: {error}"
            ) from None
        return rows
    rows = []
    for number, line in json_lines(content):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ExamplesError(f"examples file {source.path}, line {number}: {error}") from None
        if not isinstance(row, dict):
            raise ExamplesError(f"examples file {source.path}, line {number}: not a JSON object")
        rows.append(row)
    return rows


class EmbeddingCache:
    """Stores what is computed from an examples file on disk, so restarts skip the work: its
    embeddings, keyed by the embedding engine's identity (not its name: see
    `EmbeddingEngine.identity`) and the file's digest, and heads fitted on them, keyed also by
    the label column and the fit's settings."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, suffix: str, *parts: str) -> Path:
        key = "\0".join(parts)
        return self._folder / f"{hashlib.sha256(key.encode()).hexdigest()}{suffix}"

    def _vectors_path(
        self, identity: str, examples: LabelledExamples, source: ExamplesSource
    ) -> Path:
        return self._path(".npy", identity, examples.digest, source.text_column)

    def get(
        self, identity: str, examples: LabelledExamples, source: ExamplesSource
    ) -> np.ndarray | None:
        path = self._vectors_path(identity, examples, source)
        if not path.is_file():
            return None
        vectors = np.load(path)
        return vectors if vectors.shape[0] == len(examples.texts) else None

    def put(
        self, identity: str, examples: LabelledExamples, source: ExamplesSource, vectors: np.ndarray
    ) -> None:
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        self._write(self._vectors_path(identity, examples, source), buffer.getvalue())

    def head(
        self,
        identity: str,
        examples: LabelledExamples,
        source: ExamplesSource,
        settings: HeadSettings,
        fit: Callable[[], LinearHead],
    ) -> LinearHead:
        """The head fitted on these examples' vectors with these settings: read from disk, or
        fitted by `fit` and stored. Processes loading the same head at once (the ingress and the
        batch runner at start-up) take turns under a file lock, so only the first one fits.
        Blocks: call it off the event loop."""
        path = self._path(
            ".head.npz",
            identity,
            examples.digest,
            source.text_column,
            source.label_column,
            settings.model_dump_json(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                return LinearHead.from_bytes(path.read_bytes())
            head = fit()
            self._write(path, head.to_bytes())
            return head

    def _write(self, path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")
        partial.write_bytes(content)
        partial.replace(path)
