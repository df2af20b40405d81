"""Where the bytes of files live: uploads, per-chunk output, and assembled output files.

A local (or mounted, shared) folder: output is appended with fsync, which object stores cannot
do; result handlers copy finished files to object storage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import anyio

logger = logging.getLogger("capserve.batch")


class FileTooLargeError(ValueError):
    """An upload went past the size limit; nothing of it is kept."""


def sortable_id(prefix: str) -> str:
    """Ids that sort in creation order: listings order by (created_at, id), and created_at has
    whole seconds only."""
    return f"{prefix}{time.time_ns():016x}{uuid.uuid4().hex[:16]}"


def new_file_id() -> str:
    return sortable_id("file-")


def write_durably(path: Path, data: bytes) -> None:
    """Writes and fsyncs the file and its folder entry, so it survives a crash once returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with temporary.open("wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileStorage:
    """One folder: `uploads/<file id>`, `batches/<batch id>/...`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        (root / "batches").mkdir(parents=True, exist_ok=True)

    def upload_path(self, file_id: str) -> Path:
        return self.root / "uploads" / file_id

    def batch_folder(self, batch_id: str) -> Path:
        return self.root / "batches" / batch_id

    def chunk_path(self, batch_id: str, index: int, kind: str, owner: str) -> Path:
        # The owner in the name keeps a runner that lost its lease from touching the file the
        # new owner writes for the same chunk.
        return self.batch_folder(batch_id) / f"chunk-{index:06d}.{kind}.{owner}.jsonl"

    def chunk_files(self, batch_id: str) -> list[Path]:
        """Every chunk file of the batch, checkpointed or not (a runner that died or lost its
        lease leaves some), and the temporary files of writes a crash cut short."""
        folder = self.batch_folder(batch_id)
        return sorted([*folder.glob("chunk-*"), *folder.glob(".*.tmp")])

    def batches_with_chunk_files(self) -> list[str]:
        return sorted(
            folder.name
            for folder in (self.root / "batches").iterdir()
            if folder.is_dir() and self.chunk_files(folder.name)
        )

    def remove_chunk_files(self, batch_id: str) -> None:
        """For a batch that has ended: its output files are assembled, so nothing reads these."""
        self.remove(self.chunk_files(batch_id))

    def delete(self, path: Path) -> None:
        """Deletes a file's bytes, and its batch's folder once that is empty; paths outside this
        storage (a `batch_job`'s input is the user's own file) are never touched."""
        resolved, root = path.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            logger.warning("not deleting %s: it is outside the batch storage %s", path, root)
            return
        resolved.unlink(missing_ok=True)
        if resolved.parent.parent == root / "batches":
            # Another writer may have just put a file there; then the folder stays.
            with contextlib.suppress(OSError):
                resolved.parent.rmdir()

    async def save_upload(
        self, file_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[Path, int]:
        """Streams an upload to disk; its path and size."""
        path = self.upload_path(file_id)
        size = 0
        try:
            async with await anyio.open_file(path, "wb") as sink:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLargeError(
                            f"the file is larger than the limit of {max_bytes} bytes"
                        )
                    await sink.write(chunk)
                await sink.flush()
                await anyio.to_thread.run_sync(os.fsync, sink.wrapped.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size

    @staticmethod
    def assemble(parts: Sequence[Path], destination: Path) -> int:
        """Concatenates parts into `destination` durably; its size in bytes."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temporary, destination)
        _fsync_folder(destination.parent)
        return destination.stat().st_size

    @staticmethod
    def remove(paths: Iterable[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
