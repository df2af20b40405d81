"""Request priority: which work the engines serve first when they are contended.

Three classes, most urgent first: `high` and `normal` (the default) for online requests, `low`
for batch lines. vLLM's priority scheduling (`scheduling_policy: priority`) orders the requests
waiting for a step by a number, lowest first, then by arrival; `engine_priority` is that number.

The priority of the work a capability does is ambient: the host runs each group of calls
`serving_at` their priority, and the engine client reads `current_priority` for every engine call
the run makes, so no capability, built-in or a user's, has to pass it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, get_args

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
"""Most urgent first."""
DEFAULT_PRIORITY: Priority = "normal"
BATCH_PRIORITY: Priority = "low"

_current: ContextVar[Priority] = ContextVar("capserve_priority", default=DEFAULT_PRIORITY)


def engine_priority(priority: Priority) -> int:
    """vLLM's `priority=` of a request of this class: lower is served earlier."""
    return PRIORITIES.index(priority)


def above(priority: Priority, limit: Priority) -> bool:
    """Whether `priority` is more urgent than `limit`."""
    return engine_priority(priority) < engine_priority(limit)


def current_priority() -> Priority:
    """The priority of the work this task does: `serving_at`'s, or the default."""
    return _current.get()


@contextmanager
def serving_at(priority: Priority) -> Iterator[None]:
    """Engine calls made inside (and in tasks started inside) run at `priority`."""
    token = _current.set(priority)
    try:
        yield
    finally:
        _current.reset(token)
