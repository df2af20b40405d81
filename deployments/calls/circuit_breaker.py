"""A circuit breaker: after a run of failed calls it rejects calls at once for a cooldown, then
lets one probe call through, and closes again when the probe succeeds.

Pure logic with an injectable clock. It is safe for concurrent asyncio tasks because its state
only changes when a call enters or leaves `attempt()`, never across an await.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

logger = logging.getLogger("capserve.circuit_breaker")

State = Literal["closed", "open", "half_open"]
# What a finished call says about the callee: "unknown" (e.g. the caller gave up) says nothing.
Outcome = Literal["success", "failure", "unknown"]


class CircuitOpenError(Exception):
    """The breaker rejected a call without trying it."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(f"{name} failed repeatedly; calls resume in {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    """Closed: calls pass and consecutive failures are counted. Open: calls are rejected until
    `cooldown_s` has passed. Half-open: one probe passes; its success closes the breaker, its
    failure opens it again, and other calls are rejected while it runs."""

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        cooldown_s: float,
        outcome_of: Callable[[BaseException], Outcome],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`outcome_of` judges a call that raised; a call that returns is a success."""
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        self.name = name
        self.cooldown_s = cooldown_s
        self._failure_threshold = failure_threshold
        self._outcome_of = outcome_of
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        return self._state

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """Wraps one call: raises `CircuitOpenError` instead of running it when the breaker is
        open, and records how the call ended."""
        probe = self._admit()
        try:
            yield
        except BaseException as error:
            self._settle(probe, self._outcome_of(error))
            raise
        self._settle(probe, "success")

    def _admit(self) -> bool:
        """Whether the admitted call is the half-open probe; raises when no call may pass."""
        if self._state == "closed":
            return False
        if self._state == "open":
            remaining = self._opened_at + self.cooldown_s - self._clock()
            if remaining > 0:
                raise CircuitOpenError(self.name, remaining)
            self._state = "half_open"
        if self._probing:
            raise CircuitOpenError(self.name, self.cooldown_s)
        self._probing = True
        return True

    def _settle(self, probe: bool, outcome: Outcome) -> None:
        if probe:
            self._probing = False
            if outcome == "success":
                self._close()
            elif outcome == "failure":
                self._open()
            return
        # Calls admitted before the breaker opened say nothing about the callee now.
        if self._state != "closed":
            return
        if outcome == "success":
            self._failures = 0
        elif outcome == "failure":
            self._failures += 1
            if self._failures >= self._failure_threshold:
                self._open()

    def _open(self) -> None:
        if self._state == "closed":
            logger.warning("circuit %s open: calls rejected for %.1f s", self.name, self.cooldown_s)
        self._state = "open"
        self._opened_at = self._clock()
        self._failures = 0

    def _close(self) -> None:
        logger.warning("circuit %s closed: calls pass again", self.name)
        self._state = "closed"
        self._failures = 0
