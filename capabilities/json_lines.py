"""JSON Lines split as the format defines it: at "\\n" only."""

from __future__ import annotations

from collections.abc import Iterator


def json_lines(content: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of each non-blank line. Not `str.splitlines`: it also splits
    at U+2028, U+0085 and other characters a JSON string may hold raw (ticket exports do), which
    would cut such a row in two."""
    for number, line in enumerate(content.split("\n"), start=1):
        if line.strip():
            yield number, line
