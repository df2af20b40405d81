"""The SQL job store, each test on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from batchjobs import sql_store
from batchjobs.schemas import BatchObject, ChunkRecord, FileObject, FileRecord, RequestCounts
from batchjobs.sql_store import SqlJobStore, open_store
from batchjobs.store import Lease, LeaseLostError, StoreUnavailableError, WaitingBatch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 60.0
# Leases run on the database's clock, so a test lets a short one run out in real time.
SHORT_LEASE_S = 1.0


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    server_url = request.getfixturevalue("postgres_url")
    name = f"jobs_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlJobStore]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


def file_record(
    file_id: str,
    created_at: int,
    purpose: str = "batch",
    tenant: str | None = None,
    expires_at: int | None = None,
) -> FileRecord:
    return FileRecord(
        tenant=tenant,
        file=FileObject(
            id=file_id,
            bytes=10,
            created_at=created_at,
            filename=f"{file_id}.jsonl",
            purpose=purpose,
            expires_at=expires_at,
        ),
        path=f"/data/{file_id}",
    )


def batch_object(
    batch_id: str, created_at: int = 1_000, status: str = "in_progress", input_file_id: str = "f"
) -> BatchObject:
    return BatchObject(
        id=batch_id,
        endpoint="/v1/classify",
        input_file_id=input_file_id,
        completion_window="24h",
        status=status,
        created_at=created_at,
        request_counts=RequestCounts(total=100),
    )


def chunk(index: int) -> ChunkRecord:
    return ChunkRecord(index=index, first_line=index * 10, lines=10, completed=10)


def count_completed(batch: BatchObject) -> BatchObject:
    counts = batch.request_counts.model_copy(
        update={"completed": batch.request_counts.completed + 1}
    )
    return batch.model_copy(update={"request_counts": counts})


def set_status(status: str):
    return lambda batch: batch.model_copy(update={"status": status})


def ids(items: list[FileRecord] | list[BatchObject] | list[WaitingBatch]) -> list[str]:
    return [item.file.id if isinstance(item, FileRecord) else item.id for item in items]


async def test_file_round_trips_and_deletes(store: SqlJobStore) -> None:
    record = file_record("file-a", 100)
    await store.create_file(record)

    assert await store.get_file("file-a") == record
    assert await store.get_file("file-missing") is None
    assert await store.delete_file("file-a") is True
    assert await store.delete_file("file-a") is False
    assert await store.get_file("file-a") is None


async def test_list_files_pages_by_time_then_id(store: SqlJobStore) -> None:
    # Two files share a second: the id breaks the tie.
    for file_id, created_at, purpose in [
        ("file-c", 300, "batch"),
        ("file-a", 100, "batch"),
        ("file-out", 150, "batch_output"),
        ("file-b2", 200, "batch"),
        ("file-b1", 200, "batch"),
    ]:
        await store.create_file(file_record(file_id, created_at, purpose))

    page, more = await store.list_files(None, 10, "asc", None)
    assert (ids(page), more) == (["file-a", "file-out", "file-b1", "file-b2", "file-c"], False)
    page, more = await store.list_files("batch", 10, "desc", None)
    assert (ids(page), more) == (["file-c", "file-b2", "file-b1", "file-a"], False)
    page, more = await store.list_files("batch", 2, "asc", None)
    assert (ids(page), more) == (["file-a", "file-b1"], True)
    page, more = await store.list_files("batch", 2, "asc", "file-b1")
    assert (ids(page), more) == (["file-b2", "file-c"], False)
    page, more = await store.list_files("batch", 2, "desc", "file-b2")
    assert (ids(page), more) == (["file-b1", "file-a"], False)
    page, more = await store.list_files("batch_output", 1, "asc", None)
    assert (ids(page), more) == (["file-out"], False)
    assert await store.list_files(None, 10, "asc", "file-c") == ([], False)
    assert await store.list_files(None, 10, "asc", "file-unknown") == ([], False)


async def test_expired_files_are_not_listed_and_are_found_for_deletion(
    store: SqlJobStore,
) -> None:
    now = int(time.time())
    await store.create_file(file_record("file-live", 1, expires_at=now + 3600))
    await store.create_file(file_record("file-forever", 2))
    await store.create_file(file_record("file-old", 3, "batch_output", expires_at=now - 60))
    await store.create_file(file_record("file-older", 4, expires_at=now - 120))
    await store.create_file(file_record("file-in-use", 5, expires_at=now - 180))
    await store.create_batch(batch_object("batch-run", 1, "in_progress", "file-in-use"))

    page, more = await store.list_files(None, 10, "asc", None)
    assert (ids(page), more) == (["file-live", "file-forever"], False)
    # The input of a batch still running waits until the batch ends.
    assert ids(await store.expired_files(10)) == ["file-older", "file-old"]
    assert ids(await store.expired_files(1)) == ["file-older"]
    await store.update_batch("batch-run", set_status("completed"))
    assert ids(await store.expired_files(10)) == ["file-in-use", "file-older", "file-old"]


# What placeholder rewriting and format-style drivers trip on: SQLite's `?`, psycopg's `%s` and
# `%(name)s`, SQLAlchemy's `:name`, a lone `%`, and quotes.
AWKWARD = "why? 100% %s %(x)s :name ?? '; --"


async def test_records_with_placeholder_characters_round_trip(store: SqlJobStore) -> None:
    tenant, owner = f"team {AWKWARD}", f"runner {AWKWARD}"
    record = file_record(f"file {AWKWARD}", 100, tenant=tenant)
    record = record.model_copy(
        update={
            "file": record.file.model_copy(update={"filename": AWKWARD}),
            "path": f"/data/{AWKWARD}",
        }
    )
    batch = batch_object(f"batch {AWKWARD}", input_file_id=record.file.id).model_copy(
        update={"metadata": {AWKWARD: AWKWARD}}
    )
    stored_chunk = chunk(0)

    await store.create_file(record)
    await store.create_batch(batch, tenant)
    assert await store.claim_batch(batch.id, owner, LEASE_S) == Lease(batch.id, tenant, 1)
    await store.add_chunk(batch.id, owner, stored_chunk, lambda batch: None)

    assert await store.get_file(record.file.id, tenant) == record
    assert await store.list_files("batch", 10, "asc", record.file.id, tenant) == ([], False)
    assert await store.list_files("batch", 10, "asc", None, tenant) == ([record], False)
    assert await store.get_batch(batch.id, tenant) == batch
    assert await store.list_batches(10, None, tenant) == ([batch], False)
    assert await store.batches_using_file(record.file.id) == [batch]
    assert await store.chunks(batch.id) == [stored_chunk]
    await store.release_batch(batch.id, owner)
    assert [(b.id, b.tenant) for b in await store.claimable_batches()] == [(batch.id, tenant)]


async def test_list_limit_must_leave_room_for_an_item(store: SqlJobStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.list_files(None, 0, "asc", None)
    with pytest.raises(ValueError, match="limit"):
        await store.list_batches(0, None)


async def test_batch_round_trips(store: SqlJobStore) -> None:
    batch = batch_object("batch-1")
    await store.create_batch(batch)

    assert await store.get_batch("batch-1") == batch
    assert await store.get_batch("batch-missing") is None


@pytest.mark.parametrize("count", [4, 5])
async def test_list_batches_pages_newest_first(store: SqlJobStore, count: int) -> None:
    # Ties in created_at are ordered by id, newest (largest) first like the time.
    created = {f"batch-{n}": 1_000 + n // 2 for n in range(count)}
    for batch_id, created_at in created.items():
        await store.create_batch(batch_object(batch_id, created_at))
    expected = sorted(created, key=lambda batch_id: (created[batch_id], batch_id), reverse=True)

    pages: list[list[str]] = []
    after = None
    while True:
        page, more = await store.list_batches(2, after)
        pages.append(ids(page))
        assert page, "a page is never empty"
        if not more:
            break
        after = page[-1].id
    assert [batch_id for page in pages for batch_id in page] == expected
    assert len(pages) == (count + 1) // 2
    assert await store.list_batches(2, expected[-1]) == ([], False)
    assert await store.list_batches(2, "batch-unknown") == ([], False)


async def test_batches_using_file_skips_terminal_ones(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-run", 1, "in_progress", "file-in"))
    await store.create_batch(batch_object("batch-done", 2, "completed", "file-in"))
    await store.create_batch(batch_object("batch-new", 3, "validating", "file-in"))
    await store.create_batch(batch_object("batch-other", 4, "in_progress", "file-other"))

    assert ids(await store.batches_using_file("file-in")) == ["batch-run", "batch-new"]
    await store.update_batch("batch-run", set_status("cancelled"))
    assert ids(await store.batches_using_file("file-in")) == ["batch-new"]


async def test_update_batch_applies_and_returns_the_change(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))

    updated = await store.update_batch("batch-1", set_status("cancelling"))
    assert updated is not None and updated.status == "cancelling"
    assert await store.get_batch("batch-1") == updated
    unchanged = await store.update_batch("batch-1", lambda batch: None)
    assert unchanged == updated
    assert await store.update_batch("batch-missing", set_status("cancelled")) is None


async def test_update_batch_rolls_back_when_the_change_raises(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))

    def broken(batch: BatchObject) -> BatchObject:
        raise RuntimeError("change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        await store.update_batch("batch-1", broken)
    assert await store.update_batch("batch-1", count_completed) is not None
    assert (await store.get_batch("batch-1")).request_counts.completed == 1


async def test_concurrent_updates_are_all_kept(store_url: str, store: SqlJobStore) -> None:
    # A second store stands for a second process: its own connection, its own transactions.
    other = await open_store(store_url)
    try:
        await store.create_batch(batch_object("batch-1"))
        await asyncio.gather(
            *(
                (store if n % 2 else other).update_batch("batch-1", count_completed)
                for n in range(50)
            )
        )
    finally:
        await other.close()
    assert (await store.get_batch("batch-1")).request_counts.completed == 50


async def test_a_lease_is_held_until_it_expires(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))

    assert await store.claim_batch("batch-1", "runner-a", SHORT_LEASE_S)
    assert not await store.claim_batch("batch-1", "runner-b", LEASE_S)
    assert await store.claim_batch("batch-1", "runner-a", SHORT_LEASE_S), "renewal"
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert await store.claim_batch("batch-1", "runner-b", LEASE_S)
    assert not await store.claim_batch("batch-1", "runner-a", LEASE_S)
    assert not await store.claim_batch("batch-missing", "runner-a", LEASE_S)


async def test_leases_run_on_the_databases_clock_not_the_hosts(
    store: SqlJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's clock stands for a host an hour ahead of the others: by its own clock the
    # lease would have run out long ago, by the database's it has not.
    await store.create_batch(batch_object("batch-1"))
    await store.create_batch(batch_object("batch-2"))
    assert await store.claim_batch("batch-1", "runner-a", LEASE_S)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)

    assert not await store.claim_batch("batch-1", "runner-b", LEASE_S)
    assert ids(await store.claimable_batches()) == ["batch-2"]
    # Its line counts against its tenant's quota for as long as the database says it lives.
    assert await store.claimable_batches(tenant_lines=1) == []
    assert await store.claim_batch("batch-2", "runner-b", LEASE_S, tenant_lines=1) is None
    await store.add_chunk("batch-1", "runner-a", chunk(0), count_completed)
    assert await store.update_batch("batch-1", count_completed, owner="runner-a") is not None


async def test_release_frees_only_the_owners_lease(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    await store.claim_batch("batch-1", "runner-a", LEASE_S)

    await store.release_batch("batch-1", "runner-b")
    assert not await store.claim_batch("batch-1", "runner-b", LEASE_S)
    await store.release_batch("batch-1", "runner-a")
    assert await store.claim_batch("batch-1", "runner-b", LEASE_S)


async def test_a_lost_lease_refuses_updates_and_chunks(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    await store.create_batch(batch_object("batch-2"))
    # runner-a's lease on batch-1 ran out; runner-b took batch-2 over from it.
    await store.claim_batch("batch-1", "runner-a", SHORT_LEASE_S)
    await store.claim_batch("batch-2", "runner-a", SHORT_LEASE_S)
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    await store.claim_batch("batch-2", "runner-b", LEASE_S)

    for batch_id in ("batch-1", "batch-2"):
        with pytest.raises(LeaseLostError):
            await store.update_batch(batch_id, count_completed, owner="runner-a")
        with pytest.raises(LeaseLostError):
            await store.add_chunk(batch_id, "runner-a", chunk(0), count_completed)
        with pytest.raises(LeaseLostError):
            await store.finish_batch(
                batch_id, "runner-a", [file_record("file-out", 1)], set_status("completed")
            )
        assert await store.chunks(batch_id) == []
        assert await store.get_file("file-out") is None
        assert (await store.get_batch(batch_id)).request_counts.completed == 0

    updated = await store.update_batch("batch-2", count_completed, owner="runner-b")
    assert updated is not None and updated.request_counts.completed == 1


async def test_finish_batch_records_the_files_with_the_change(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    await store.claim_batch("batch-1", "runner-a", LEASE_S)
    output = file_record("file-out", 1, "batch_output")

    finished = await store.finish_batch("batch-1", "runner-a", [output], set_status("completed"))
    assert finished.status == "completed"
    assert await store.get_batch("batch-1") == finished
    assert await store.get_file("file-out") == output
    # Again after a crash: the stored file is kept, and a change that leaves the batch as it
    # is records nothing.
    again = await store.finish_batch("batch-1", "runner-a", [output], set_status("completed"))
    assert again.status == "completed"
    unchanged = await store.finish_batch(
        "batch-1", "runner-a", [file_record("file-other", 2)], lambda batch: None
    )
    assert unchanged == again and await store.get_file("file-other") is None


async def test_add_chunk_stores_it_and_changes_the_batch_together(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    await store.claim_batch("batch-1", "runner-a", LEASE_S)

    for index in (2, 0, 1):
        await store.add_chunk("batch-1", "runner-a", chunk(index), count_completed)

    assert [stored.index for stored in await store.chunks("batch-1")] == [0, 1, 2]
    assert await store.chunks("batch-1") == [chunk(0), chunk(1), chunk(2)]
    assert (await store.get_batch("batch-1")).request_counts.completed == 3
    assert await store.chunks("batch-missing") == []


async def test_a_chunk_index_is_stored_once(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    await store.claim_batch("batch-1", "runner-a", LEASE_S)
    await store.add_chunk("batch-1", "runner-a", chunk(0), count_completed)

    replacement = chunk(0).model_copy(update={"completed": 0, "failed": 10})
    with pytest.raises(LeaseLostError):
        await store.add_chunk("batch-1", "runner-a", replacement, count_completed)
    assert await store.chunks("batch-1") == [chunk(0)]
    assert (await store.get_batch("batch-1")).request_counts.completed == 1


async def test_add_chunk_to_a_missing_batch_is_refused(store: SqlJobStore) -> None:
    with pytest.raises(LeaseLostError):
        await store.add_chunk("batch-missing", "runner-a", chunk(0), count_completed)


async def test_claimable_batches(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-running", 3, "in_progress"))
    await store.create_batch(batch_object("batch-new", 1, "validating"))
    await store.create_batch(batch_object("batch-done", 2, "completed"))
    await store.create_batch(batch_object("batch-handled", 4, "failed"))
    await store.create_batch(batch_object("batch-leased", 5, "in_progress"))
    await store.claim_batch("batch-handled", "runner-a", LEASE_S)
    await store.mark_handled("batch-handled", "runner-a")
    await store.claim_batch("batch-leased", "runner-a", SHORT_LEASE_S)

    # Batches waiting only for their result handlers first: they take no lines.
    expected = ["batch-done", "batch-new", "batch-running"]
    assert ids(await store.claimable_batches()) == expected
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert ids(await store.claimable_batches()) == [*expected, "batch-leased"]
    assert not await store.claim_batch("batch-handled", "runner-b", LEASE_S)


async def test_a_tenants_lines_in_flight_keep_to_its_quota_over_every_runner(
    store: SqlJobStore,
) -> None:
    for name in ("a-1", "a-2", "a-3"):
        await store.create_batch(batch_object(name), tenant="team-a")
    await store.create_batch(batch_object("b-1"), tenant="team-b")
    await store.create_batch(batch_object("a-done", status="completed"), tenant="team-a")

    def claim(batch_id: str, owner: str, lease_s: float = LEASE_S):
        return store.claim_batch(batch_id, owner, lease_s, lines=64, tenant_lines=100)

    assert await claim("a-1", "runner-x") == Lease("a-1", "team-a", 64)
    # Another runner gets what the quota has left, then nothing.
    assert await claim("a-2", "runner-y") == Lease("a-2", "team-a", 36)
    assert await claim("a-3", "runner-y") is None
    assert await claim("b-1", "runner-y") == Lease("b-1", "team-b", 64)
    # Result handlers run no lines: a terminal batch is taken whatever the quota.
    assert await claim("a-done", "runner-y") == Lease("a-done", "team-a", 0)
    # A renewal keeps its lines; a released or expired lease gives them back.
    assert await claim("a-1", "runner-x", SHORT_LEASE_S) == Lease("a-1", "team-a", 64)
    await store.release_batch("a-2", "runner-y")
    assert await claim("a-3", "runner-y", SHORT_LEASE_S) == Lease("a-3", "team-a", 36)
    await asyncio.sleep(SHORT_LEASE_S + 0.1)
    assert await claim("a-2", "runner-z") == Lease("a-2", "team-a", 64)


async def test_concurrent_claims_of_one_tenant_never_exceed_its_quota(
    store_url: str, store: SqlJobStore
) -> None:
    others = [await open_store(store_url) for _ in range(3)]
    try:
        for index in range(8):
            await store.create_batch(batch_object(f"a-{index}"), tenant="team-a")
        leases = await asyncio.gather(
            *(
                others[index % 3].claim_batch(
                    f"a-{index}", f"runner-{index}", LEASE_S, lines=40, tenant_lines=100
                )
                for index in range(8)
            )
        )
    finally:
        for other in others:
            await other.close()
    granted = sorted(lease.lines for lease in leases if lease is not None)
    assert granted == [20, 40, 40]


async def test_waiting_batches_come_fairest_first(store: SqlJobStore) -> None:
    for index, (name, tenant) in enumerate(
        [("a-1", "team-a"), ("a-2", "team-a"), ("a-3", "team-a"), ("b-1", "team-b")]
        + [("c-1", "team-c"), ("c-2", "team-c"), ("d-1", "team-d")]
    ):
        await store.create_batch(batch_object(name, created_at=index), tenant=tenant)

    def claim(batch_id: str, owner: str):
        return store.claim_batch(batch_id, owner, LEASE_S, lines=64, tenant_lines=128)

    await claim("a-1", "runner-x")
    await claim("c-1", "runner-y")
    await store.release_batch("c-1", "runner-y")
    await claim("a-2", "runner-x")
    await claim("d-1", "runner-y")

    waiting = await store.claimable_batches(tenant_lines=128)
    # team-a's quota is used up; tenants with no lines in flight before team-d's 64, and of
    # those the one never served (team-b) before the one served a moment ago (team-c).
    assert ids(waiting) == ["b-1", "c-1", "c-2"]
    assert [(batch.tenant, batch.tenant_lines) for batch in waiting] == [
        ("team-b", 0),
        ("team-c", 0),
        ("team-c", 0),
    ]
    assert ids(await store.claimable_batches()) == ["b-1", "c-1", "c-2", "a-3"]


async def test_mark_handled_releases_the_lease(store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1", status="completed"))
    await store.claim_batch("batch-1", "runner-a", LEASE_S)
    await store.mark_handled("batch-1", "runner-a")

    assert ids(await store.claimable_batches()) == []
    assert not await store.claim_batch("batch-1", "runner-a", LEASE_S)
    with pytest.raises(LeaseLostError):
        await store.update_batch("batch-1", count_completed, owner="runner-a")


async def test_a_tenant_sees_only_its_own_files_and_batches(store: SqlJobStore) -> None:
    await store.create_file(file_record("file-a", 100, tenant="team-a"))
    await store.create_file(file_record("file-b", 101, tenant="team-b"))
    await store.create_batch(batch_object("batch-a", 100, input_file_id="file-a"), "team-a")
    await store.create_batch(batch_object("batch-b", 101, input_file_id="file-b"), "team-b")

    assert (await store.get_file("file-a", "team-a")).tenant == "team-a"
    assert await store.get_file("file-a", "team-b") is None
    assert await store.get_batch("batch-a", "team-b") is None
    assert (await store.get_batch("batch-a", "team-a")).id == "batch-a"
    files, more = await store.list_files(None, 10, "asc", None, "team-b")
    assert (ids(files), more) == (["file-b"], False)
    batches, more = await store.list_batches(10, None, "team-a")
    assert (ids(batches), more) == (["batch-a"], False)
    # Paging after another tenant's item shows nothing of it either.
    files, _ = await store.list_files(None, 10, "asc", "file-a", "team-b")
    assert ids(files) == ["file-b"]
    # No tenant: everyone's, as with keys off.
    everything, _ = await store.list_files(None, 10, "asc", None)
    assert ids(everything) == ["file-a", "file-b"]


async def test_a_store_made_before_tenants_gains_the_columns(store_url: str) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip("the same ALTER TABLE path; SQLite is enough to show the upgrade")
    path = store_url.removeprefix("sqlite:///")
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE files (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, "
        "purpose TEXT NOT NULL, record TEXT NOT NULL);"
        "CREATE TABLE batches (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, "
        "status TEXT NOT NULL, input_file_id TEXT NOT NULL, owner TEXT, "
        "lease_until DOUBLE PRECISION, handled INTEGER NOT NULL DEFAULT 0, record TEXT NOT NULL);"
    )
    old.execute(
        "INSERT INTO files VALUES (?, ?, ?, ?)",
        ("file-old", 1, "batch", file_record("file-old", 1).model_dump_json()),
    )
    old.commit()
    old.close()

    upgraded = await open_store(store_url)
    try:
        assert (await upgraded.get_file("file-old")).file.id == "file-old"
        await upgraded.create_file(file_record("file-new", 2, tenant="team-a"))
        assert await upgraded.get_file("file-old", "team-a") is None
        assert (await upgraded.get_file("file-new", "team-a")).tenant == "team-a"
    finally:
        await upgraded.close()


async def test_a_store_made_before_expiry_gains_it_from_its_records(store_url: str) -> None:
    # The tables as they were before the expires_at column, holding a file that has expired.
    expired = file_record("file-old", 1, expires_at=int(time.time()) - 60)
    kept = file_record("file-kept", 2)
    tables = (
        (
            "CREATE TABLE files (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, "
            "purpose TEXT NOT NULL, tenant TEXT, record TEXT NOT NULL)"
        ),
        (
            "CREATE TABLE batches (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, "
            "status TEXT NOT NULL, input_file_id TEXT NOT NULL, tenant TEXT, owner TEXT, "
            "lease_until DOUBLE PRECISION, handled INTEGER NOT NULL DEFAULT 0, "
            "record TEXT NOT NULL)"
        ),
    )
    rows = [
        (r.file.id, r.file.created_at, r.file.purpose, r.model_dump_json()) for r in (expired, kept)
    ]
    if store_url.startswith("sqlite"):
        old = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        for table in tables:
            old.execute(table)
        old.executemany(
            "INSERT INTO files (id, created_at, purpose, record) VALUES (?, ?, ?, ?)", rows
        )
        old.commit()
        old.close()
    else:
        with psycopg.connect(store_url, autocommit=True) as old:
            for table in tables:
                old.execute(table)
            with old.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO files (id, created_at, purpose, record) VALUES (%s, %s, %s, %s)",
                    rows,
                )

    upgraded = await open_store(store_url)
    try:
        assert ids(await upgraded.expired_files(10)) == ["file-old"]
        page, _ = await upgraded.list_files(None, 10, "asc", None)
        assert ids(page) == ["file-kept"]
    finally:
        await upgraded.close()


async def test_a_reopened_store_sees_everything(store_url: str) -> None:
    first = await open_store(store_url)
    await first.create_file(file_record("file-in", 100))
    await first.create_batch(batch_object("batch-1", input_file_id="file-in"))
    await first.create_batch(batch_object("batch-2", status="completed"))
    await first.claim_batch("batch-1", "runner-a", LEASE_S)
    await first.add_chunk("batch-1", "runner-a", chunk(0), count_completed)
    await first.mark_handled("batch-2", "runner-a")
    await first.close()

    second = await open_store(store_url)
    try:
        assert await second.get_file("file-in") == file_record("file-in", 100)
        batch = await second.get_batch("batch-1")
        assert batch is not None and batch.request_counts.completed == 1
        assert await second.chunks("batch-1") == [chunk(0)]
        assert ids(await second.claimable_batches()) == []
        await second.claim_batch("batch-1", "runner-a", LEASE_S)
        await second.add_chunk("batch-1", "runner-a", chunk(1), count_completed)
        await second.release_batch("batch-1", "runner-a")
        assert ids(await second.claimable_batches()) == ["batch-1"]
    finally:
        await second.close()


CHILD_PROCESS = """
import asyncio, os, signal, sys
from batchjobs.sql_store import open_store

def count_completed(batch):
    counts = batch.request_counts
    counts = counts.model_copy(update={"completed": counts.completed + 1})
    return batch.model_copy(update={"request_counts": counts})

async def main(url: str, count: int) -> None:
    store = await open_store(url)
    print("open", flush=True)
    for _ in range(count):
        await store.update_batch("batch-1", count_completed)
    os.kill(os.getpid(), signal.SIGKILL)  # no close: what it committed must be there anyway

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_two_processes_share_the_store(store_url: str, store: SqlJobStore) -> None:
    await store.create_batch(batch_object("batch-1"))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_PROCESS,
        store_url,
        "100",
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), timeout=60) == b"open\n"
    for _ in range(100):
        await store.update_batch("batch-1", count_completed)
    assert await asyncio.wait_for(child.wait(), timeout=60) == -9

    reopened = await open_store(store_url)
    try:
        assert (await reopened.get_batch("batch-1")).request_counts.completed == 200
    finally:
        await reopened.close()


async def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    forms = {
        f"sqlite:///{tmp_path}/absolute/jobs.db": tmp_path / "absolute" / "jobs.db",
        "sqlite:///relative/jobs.db": tmp_path / "relative" / "jobs.db",
        str(tmp_path / "plain" / "jobs.db"): tmp_path / "plain" / "jobs.db",
        "plain-relative.db": tmp_path / "plain-relative.db",
    }
    for url, path in forms.items():
        await (await open_store(url)).close()
        assert path.is_file(), url


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_postgres_url_forms(store_url: str) -> None:
    first = await open_store(store_url)
    second = await open_store(store_url.replace("postgresql://", "postgres://", 1))
    try:
        await first.create_batch(batch_object("batch-1"))
        assert await second.get_batch("batch-1") is not None
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("url", ["mysql://host/db", "sqlite://jobs.db", "sqlite:jobs.db"])
async def test_unknown_url_forms_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        await open_store(url)


async def test_a_closed_store_refuses_calls(store_url: str) -> None:
    closed = await open_store(store_url)
    await closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        await closed.get_batch("batch-1")


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_cut_postgres_connection_is_replaced(
    store_url: str, store: SqlJobStore, postgres_url: str
) -> None:
    await store.create_batch(batch_object("batch-1"))
    database = store_url.rsplit("/", 1)[1]

    def cut_connections() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )

    cut_connections()
    assert await store.get_batch("batch-1") is not None
    cut_connections()
    assert await store.update_batch("batch-1", count_completed) is not None
    assert (await store.get_batch("batch-1")).request_counts.completed == 1


async def test_a_sqlite_store_locked_past_its_busy_timeout_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "jobs.db"
    store = await open_store(str(path))
    # Another process holds the database's write lock longer than the store waits for it.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="database failed"):
            await store.create_batch(batch_object("batch-1"))
        assert await store.get_batch("batch-1") is None, "readers are not held up"
    finally:
        other.execute("ROLLBACK")
        other.close()
    try:
        await store.create_batch(batch_object("batch-1"))
        assert await store.get_batch("batch-1") is not None
    finally:
        await store.close()
