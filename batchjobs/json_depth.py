"""Parsing JSON that nests no deeper than a limit.

Deep nesting is an attack, never data: `[[[[...` costs the parser a Python frame per level (it
raises RecursionError near a thousand) and every later tree walk as much again. Values within
the limit are checked without recursion, so no input can exhaust the stack here.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_MAX_JSON_DEPTH = 32


class JsonTooDeepError(ValueError):
    """The JSON nests arrays and objects deeper than `max_depth` levels."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(
            f"JSON nests arrays and objects deeper than the limit of {max_depth} levels"
        )
        self.max_depth = max_depth


def loads_within_depth(raw: bytes | bytearray | str, max_depth: int) -> Any:
    """`json.loads(raw)`, raising JsonTooDeepError when it nests deeper than `max_depth`
    (a scalar is depth 0, `[1]` depth 1) and ValueError when it is not JSON."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonTooDeepError(max_depth) from None
    if _openings(raw) > max_depth and _depth_exceeds(value, max_depth):
        raise JsonTooDeepError(max_depth)
    return value


def _openings(raw: bytes | bytearray | str) -> int:
    """An upper bound of the depth, counted at C speed: no JSON nests deeper than it opens."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    pending = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
