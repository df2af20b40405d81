"""A runner's slots shared fairly between tenants, on a real SQLite store with fake lines: one
tenant's long batches neither hold every slot nor keep another tenant's batch waiting to the end."""

import asyncio
import time
from pathlib import Path

import pytest

from batchjobs.executor import BatchExecutor
from batchjobs.scheduler import BatchScheduler
from batchjobs.sql_store import open_store
from batchjobs.store import StoreUnavailableError
from tests.unit.test_batch_executor import FakeLines, Setup, settings


@pytest.fixture
async def setup(tmp_path: Path):
    environment = Setup(tmp_path, await open_store(f"sqlite:///{tmp_path / 'jobs.db'}"))
    yield environment
    await environment.store.close()


def scheduler(
    setup: Setup, lines: FakeLines, slots: int, executor: BatchExecutor | None = None, **changes
) -> BatchScheduler:
    runs = settings(**changes)
    return BatchScheduler(
        setup.store,
        executor or BatchExecutor(setup.store, setup.storage, lines, runs, setup.handled, "r-1"),
        max_concurrent_batches=slots,
        tenant_lines=runs.max_lines_per_tenant,
        on_change=lambda: None,
    )


async def run_until_all_end(runner: BatchScheduler, setup: Setup, batches: int) -> list[str]:
    """Polls as the runner deployment does; the batch ids in the order they ended."""
    deadline = time.monotonic() + 30
    while len(setup.handled.results) < batches:
        assert time.monotonic() < deadline, "the batches did not end"
        await runner.take_work()
        await asyncio.sleep(0.01)
    return [result.batch.id for result in setup.handled.results]


async def test_a_tenant_with_nothing_running_gets_a_full_runners_slot(setup: Setup) -> None:
    long = await setup.batch([f"a{i}" for i in range(40)], tenant="team-a")
    short = await setup.batch([f"b{i}" for i in range(5)], tenant="team-b")
    lines = FakeLines(delay_s=0.005)
    runner = scheduler(setup, lines, slots=1)

    ended = await run_until_all_end(runner, setup, 2)

    # team-a's batch gave up the one slot after a chunk; team-b's ran, then team-a's resumed.
    assert ended == [short.id, long.id]
    first_b = lines.calls.index("b0")
    assert lines.calls[:first_b] == [f"a{i}" for i in range(5)]
    output = await setup.lines_of((await setup.store.get_batch(long.id)).output_file_id)
    assert [line["custom_id"] for line in output] == [f"id-{i}" for i in range(40)]


async def test_a_tenants_batches_share_its_quota_while_others_run_beside(setup: Setup) -> None:
    for tenant in ("team-a", "team-a", "team-a", "team-b"):
        await setup.batch([f"{tenant}-{i}" for i in range(10)], tenant=tenant)
    lines = FakeLines(delay_s=0.005)
    runner = scheduler(setup, lines, slots=3, max_concurrent_lines=4, max_lines_per_tenant=6)

    await run_until_all_end(runner, setup, 4)

    assert lines.most_in_flight["team-a"] <= 6
    assert lines.most_in_flight["team-b"] == 4
    # team-b's batch, created last, did not wait for team-a's three.
    assert lines.calls.index("team-b-0") < lines.calls.index("team-a-9")


class StoreDown:
    """An executor whose store is unreachable."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, batch_id: str, should_yield: object = None) -> bool:
        self.runs += 1
        raise StoreUnavailableError("the database is down")


async def test_a_store_outage_does_not_count_against_the_batch(setup: Setup) -> None:
    batch = await setup.batch(["a"])
    down = StoreDown()
    runner = scheduler(setup, FakeLines(), slots=1, executor=down)  # type: ignore[arg-type]
    for _ in range(5):
        await runner.take_work()
        while runner.active:
            await asyncio.sleep(0.01)
    stored = await setup.store.get_batch(batch.id)
    assert down.runs == 5 and stored is not None and stored.status == "validating"


async def test_stopping_releases_the_leases_of_running_batches(setup: Setup) -> None:
    # A replica shutting down: its batches stop, and another runner resumes them at once.
    batch = await setup.batch([f"t{i}" for i in range(10)])
    lines = FakeLines(hang_after=2)
    runner = scheduler(setup, lines, slots=1)
    await runner.take_work()
    while len(lines.calls) < 3:
        await asyncio.sleep(0.01)
    assert runner.active == [batch.id]
    assert await setup.store.claimable_batches() == []

    await runner.stop()
    assert runner.active == []
    assert [waiting.id for waiting in await setup.store.claimable_batches()] == [batch.id]
