"""Labelled examples files as ticket exports write them: quoted line breaks, Unicode line
separators inside texts, a byte order mark."""

import csv
import json
from pathlib import Path

import pytest

from capabilities.errors import ExamplesError
from capabilities.examples import ExamplesSource, load_examples

# Texts as exported from a ticket system: a multi-line body, and characters str.splitlines
# treats as line ends (LINE SEPARATOR, NEXT LINE, PARAGRAPH SEPARATOR, FORM FEED).
TEXTS = [
    "Card never arrived.\nOrdered it two weeks ago,\r\nstill nothing.",
    "Where is my card?\u2028Second line of the same ticket",
    "Lost my wallet\u0085and card\u2029yesterday\x0c",
    'She said "freeze it", then hung up',
]
LABELS = ["card_arrival", "card_arrival", "lost_card", "lost_card"]


def write_csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_csv_rows_keep_quoted_line_breaks_and_unicode_separators(tmp_path):
    path = write_csv(tmp_path / "tickets.csv", list(zip(TEXTS, LABELS, strict=True)))
    examples = load_examples(ExamplesSource(path=path))
    assert examples.texts == TEXTS
    assert examples.labels == LABELS


def test_jsonl_rows_keep_unicode_separators(tmp_path):
    path = tmp_path / "tickets.jsonl"
    # ensure_ascii=False writes U+2028 and U+0085 raw, as JSON allows inside strings.
    lines = [
        json.dumps({"text": t, "label": lab}, ensure_ascii=False)
        for t, lab in zip(TEXTS, LABELS, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    examples = load_examples(ExamplesSource(path=path))
    assert examples.texts == TEXTS
    assert examples.labels == LABELS


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write_csv(tmp_path / "excel.csv", [("my card", "card_arrival")], encoding="utf-8-sig")
    assert load_examples(ExamplesSource(path=path)).texts == ["my card"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,label\n\xff\xfe,x\n", "is not UTF-8"),
        (b"text,label\nok,x\n" + b"a" * 200_000 + b",x\n", "row 2: field larger than field limit"),
    ],
)
def test_unreadable_csv_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ExamplesError, match=message) as raised:
        load_examples(ExamplesSource(path=path))
    assert str(path) in str(raised.value)
