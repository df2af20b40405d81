"""Deleting what no one will read again: expired files, and chunk files of batches that ended.

Batch runners call `clean_storage` periodically. Every step is safe to run twice at once (on two
replicas) or to repeat after a crash part-way: bytes go before their record, so a record never
outlives a sweep without bytes to delete.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from batchjobs.files import FileStorage
from batchjobs.store import JobStore

logger = logging.getLogger("capserve.batch")
# Expired files deleted per store query: a backlog clears over a few queries, never one huge one.
EXPIRED_PAGE = 500


@dataclass(frozen=True)
class Cleaned:
    expired_files: int
    batches_with_chunk_files: int


async def clean_storage(store: JobStore, storage: FileStorage) -> Cleaned:
    """Deletes every expired file (bytes, then record) not in use as a running batch's input, and
    the chunk files left in the folders of batches that have ended or no longer exist."""
    expired = 0
    while page := await store.expired_files(EXPIRED_PAGE):
        for record in page:
            await asyncio.to_thread(storage.delete, Path(record.path))
            await store.delete_file(record.file.id)
        expired += len(page)
    swept = 0
    for batch_id in await asyncio.to_thread(storage.batches_with_chunk_files):
        batch = await store.get_batch(batch_id)
        # A running batch's chunk files are its checkpoints, and those of a runner that died
        # wait for the batch to end (its finalization deletes them all).
        if batch is None or batch.terminal:
            await asyncio.to_thread(storage.remove_chunk_files, batch_id)
            swept += 1
    if expired or swept:
        logger.info(
            "storage cleanup: deleted %d expired file(s), chunk files of %d ended batch(es)",
            expired,
            swept,
        )
    return Cleaned(expired_files=expired, batches_with_chunk_files=swept)
