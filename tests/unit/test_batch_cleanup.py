"""The storage cleanup, on SQLite and on a real PostgreSQL server: expired files lose their bytes
and records, and the chunk files of batches that ended go."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchjobs.cleanup import clean_storage
from batchjobs.files import FileStorage
from batchjobs.schemas import FileObject, FileRecord
from batchjobs.sql_store import SqlJobStore, open_store
from tests.unit.test_batch_store import batch_object, store_url  # noqa: F401 - fixture


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlJobStore]:  # noqa: F811
    opened = await open_store(store_url)
    yield opened
    await opened.close()


async def stored_file(
    store: SqlJobStore, file_id: str, path: Path, expires_at: int | None
) -> FileRecord:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    record = FileRecord(
        file=FileObject(
            id=file_id,
            bytes=3,
            created_at=1,
            filename=path.name,
            purpose="batch",
            expires_at=expires_at,
        ),
        path=str(path),
    )
    await store.create_file(record)
    return record


def chunk_file(storage: FileStorage, batch_id: str, owner: str) -> Path:
    path = storage.chunk_path(batch_id, 0, "output", owner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"custom_id": "a"}\n')
    return path


async def test_expired_files_lose_their_bytes_and_records(
    store: SqlJobStore, tmp_path: Path
) -> None:
    storage = FileStorage(tmp_path / "files")
    past, future = int(time.time()) - 60, int(time.time()) + 3600
    upload = await stored_file(store, "file-up", storage.upload_path("file-up"), past)
    output_path = storage.batch_folder("batch_done") / "output.jsonl"
    output = await stored_file(store, "file-out", output_path, past)
    live = await stored_file(store, "file-live", storage.upload_path("file-live"), future)
    in_use = await stored_file(store, "file-in", storage.upload_path("file-in"), past)
    await store.create_batch(
        batch_object("batch_run", status="in_progress", input_file_id="file-in")
    )
    # A batch_job's input is the user's own file: its record may go, its bytes never.
    outside = await stored_file(store, "file-user", tmp_path / "user" / "input.jsonl", past)

    cleaned = await clean_storage(store, storage)

    assert cleaned.expired_files == 3
    for record in (upload, output, outside):
        assert await store.get_file(record.file.id) is None
    assert not Path(upload.path).exists() and not Path(output.path).exists()
    assert not storage.batch_folder("batch_done").exists(), "an emptied batch folder goes too"
    assert Path(outside.path).exists()
    for record in (live, in_use):
        assert await store.get_file(record.file.id) == record
        assert Path(record.path).exists()
    assert (await clean_storage(store, storage)).expired_files == 0


async def test_chunk_files_go_once_their_batch_has_ended(
    store: SqlJobStore, tmp_path: Path
) -> None:
    storage = FileStorage(tmp_path / "files")
    await store.create_batch(batch_object("batch_done", status="completed"))
    await store.create_batch(batch_object("batch_run", status="in_progress"))
    # A runner that died left a chunk file without a checkpoint, and a crash cut a write short.
    ended = [chunk_file(storage, "batch_done", "runner-dead")]
    ended.append(storage.batch_folder("batch_done") / ".chunk-000001.output.x.jsonl.1234.tmp")
    ended[-1].write_text("partial")
    output = storage.batch_folder("batch_done") / "output.jsonl"
    output.write_text("{}\n")
    gone = chunk_file(storage, "batch_deleted", "runner-a")
    running = chunk_file(storage, "batch_run", "runner-a")

    cleaned = await clean_storage(store, storage)

    assert cleaned.batches_with_chunk_files == 2
    assert not any(path.exists() for path in [*ended, gone])
    assert output.exists(), "the assembled output is a file of its own, deleted on expiry"
    assert running.exists(), "a running batch's chunks are its checkpoints"
    assert storage.batches_with_chunk_files() == ["batch_run"]
