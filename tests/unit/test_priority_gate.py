"""The engine's priority gate: low-priority requests are capped while more urgent ones are about,
and only then; urgent ones never wait."""

from __future__ import annotations

import asyncio
import contextlib

from capabilities.priority import Priority
from deployments.config import EnginePriorityConfig
from deployments.engine.priority_gate import PriorityGate

WINDOW_S = 0.05


class Requests:
    """Requests holding the gate until released, each entering in a task of its own."""

    def __init__(self, gate: PriorityGate) -> None:
        self.gate = gate
        self.entered: list[str] = []
        self._release: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def send(self, name: str, priority: Priority) -> None:
        self._release[name] = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._hold(name, priority)))

    async def _hold(self, name: str, priority: Priority) -> None:
        async with self.gate.admitted(priority):
            self.entered.append(name)
            await self._release[name].wait()

    def release(self, name: str) -> None:
        self._release[name].set()

    async def settle(self, seconds: float = 0.01) -> None:
        await asyncio.sleep(seconds)

    async def online_then_low(self, lows: int) -> None:
        """An online request in the engine, then `lows` low ones behind it."""
        self.send("online", "normal")
        await self.settle()
        for n in range(lows):
            self.send(f"low-{n}", "low")
        await self.settle()

    async def finish(self) -> None:
        for event in self._release.values():
            event.set()
        await asyncio.gather(*self._tasks)


@contextlib.asynccontextmanager
async def requests(limit: int | None, window_s: float = 60.0):
    config = EnginePriorityConfig(low_in_flight_while_online=limit, online_window_s=window_s)
    sent = Requests(PriorityGate(config))
    try:
        yield sent
    finally:
        await sent.finish()


async def test_without_online_traffic_low_requests_are_not_capped():
    async with requests(limit=2) as sent:
        for n in range(5):
            sent.send(f"low-{n}", "low")
        await sent.settle()
        assert len(sent.entered) == 5


async def test_while_an_online_request_is_inside_low_ones_enter_one_at_a_time():
    async with requests(limit=2) as sent:
        await sent.online_then_low(4)
        assert sent.entered == ["online", "low-0"]
        sent.release("low-0")
        await sent.settle()
        assert sent.entered == ["online", "low-0", "low-1"]


async def test_between_online_requests_low_ones_fill_the_engine_up_to_the_cap():
    async with requests(limit=2) as sent:
        await sent.online_then_low(4)
        sent.release("online")
        await sent.settle()
        assert sent.entered == ["online", "low-0", "low-1"]
        sent.release("low-0")
        await sent.settle()
        assert sent.entered == ["online", "low-0", "low-1", "low-2"]


async def test_urgent_requests_never_wait():
    async with requests(limit=1) as sent:
        sent.send("online", "normal")
        sent.send("low-0", "low")
        sent.send("low-1", "low")
        sent.send("high", "high")
        await sent.settle()
        assert sent.entered == ["online", "low-0", "high"]


async def test_the_cap_lifts_a_window_after_the_last_online_request():
    async with requests(limit=1, window_s=WINDOW_S) as sent:
        sent.send("online", "high")
        await sent.settle()
        for n in range(3):
            sent.send(f"low-{n}", "low")
        sent.release("online")
        await sent.settle()
        assert sent.entered[:2] == ["online", "low-0"]
        await sent.settle(WINDOW_S * 4)
        assert sent.entered == ["online", "low-0", "low-1", "low-2"]


async def test_no_cap_leaves_the_order_to_the_engine():
    async with requests(limit=None) as sent:
        sent.send("online", "high")
        for n in range(3):
            sent.send(f"low-{n}", "low")
        await sent.settle()
        assert len(sent.entered) == 4


async def test_a_low_request_cancelled_while_waiting_takes_no_room():
    gate = PriorityGate(EnginePriorityConfig(low_in_flight_while_online=1))
    entered: list[str] = []

    async def hold(name: str, priority: Priority, release: asyncio.Event) -> None:
        async with gate.admitted(priority):
            entered.append(name)
            await release.wait()

    done = asyncio.Event()
    online = asyncio.create_task(hold("online", "high", asyncio.Event()))
    await asyncio.sleep(0.01)
    first = asyncio.create_task(hold("low-0", "low", done))
    cancelled = asyncio.create_task(hold("low-1", "low", asyncio.Event()))
    last = asyncio.create_task(hold("low-2", "low", done))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    done.set()
    await asyncio.gather(first, last)
    assert entered == ["online", "low-0", "low-2"]
    online.cancel()
