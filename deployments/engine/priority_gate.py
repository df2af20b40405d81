"""Holds low-priority requests back from an engine while more urgent ones are about.

vLLM's priority scheduling orders the requests *waiting* for a step, but a step, once running,
finishes, and every waiting request that fits joins the next one. Where a step is long (a CPU
engine: tens of texts take a few hundred milliseconds) an online request that arrives behind a
step full of batch lines waits for it, then shares its own step with more of them. So while
online requests are about, the gate caps the low-priority requests inside the engine, keeping
steps short, and while one is inside the engine it lets a single low-priority request in at a
time, so that its next step is almost its own and batch lines still progress. When online
traffic stops, the cap lifts and batch lines fill the engine again. On GPUs, where a step of 256
costs about what a step of 8 does, leave the cap off: priority order alone suffices.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator

from capabilities.priority import PRIORITIES, Priority
from deployments.config import EnginePriorityConfig

LOWEST: Priority = PRIORITIES[-1]


class PriorityGate:
    """One engine's admission of requests by priority; `EnginePriorityConfig` sets the cap.
    Low-priority requests enter in the order they came."""

    def __init__(self, config: EnginePriorityConfig) -> None:
        self._limit = config.low_in_flight_while_online
        self._window_s = config.online_window_s
        self._urgent_in_flight = 0
        self._urgent_last = -math.inf
        self._low_in_flight = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._quiet_check: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def admitted(self, priority: Priority) -> AsyncIterator[None]:
        """Inside, the request may be in the engine: more urgent ones at once, low ones when
        there is room for them."""
        if priority != LOWEST:
            self._urgent_in_flight += 1
            try:
                yield
            finally:
                self._urgent_in_flight -= 1
                self._urgent_last = time.monotonic()
                self._admit_waiting()
                self._check_quiet_later()
            return
        await self._enter_low()
        try:
            yield
        finally:
            self._low_in_flight -= 1
            self._admit_waiting()

    async def _enter_low(self) -> None:
        if not self._waiting and self._has_room():
            self._low_in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # admitted, then cancelled
                self._low_in_flight -= 1
                self._admit_waiting()
            raise

    def _online(self) -> bool:
        return self._urgent_in_flight > 0 or time.monotonic() < self._urgent_last + self._window_s

    def _has_room(self) -> bool:
        if self._limit is None or not self._online():
            return True
        return self._low_in_flight < (1 if self._urgent_in_flight else self._limit)

    def _admit_waiting(self) -> None:
        while self._waiting and self._has_room():
            waiter = self._waiting.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                self._low_in_flight += 1
                waiter.set_result(None)

    def _check_quiet_later(self) -> None:
        """Lifts the cap once the window after the last urgent request has passed."""
        if self._quiet_check is not None:
            self._quiet_check.cancel()
        self._quiet_check = None
        remaining = self._urgent_last + self._window_s - time.monotonic()
        if self._waiting and self._urgent_in_flight == 0 and remaining > 0:
            self._quiet_check = asyncio.get_running_loop().call_later(remaining, self._quiet)

    def _quiet(self) -> None:
        self._admit_waiting()
        # The loop may run a timer a clock tick early: look again if still inside the window.
        self._check_quiet_later()
