"""What the job store keeps and how it changes: files, batches, leases and chunk checkpoints.

Every change of a batch is a read-modify-write inside one transaction (`update_batch`), so the
ingress (cancel) and a runner (progress) never overwrite each other. A runner owns a batch through
a lease that it renews; a checkpoint or change made under a lease that was lost is refused, so
two runners never both write a batch's output. Leases run on the store's own clock (the
database's), so callers give durations, never times.

A lease also reserves lines: a claim of a batch that runs lines (validating or in progress) takes
up to the runner's concurrency out of its tenant's quota of lines in flight, counted over every
live lease in the store, so the quota holds however many runners there are. `claimable_batches`
lists waiting batches fairly: tenants with the fewest lines in flight, then the one served least
recently, first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from batchjobs.schemas import BatchObject, ChunkRecord, FileRecord

BatchChange = Callable[[BatchObject], BatchObject | None]
"""Returns the changed batch, or None to leave it as it is."""

RUNNING_STATUSES = frozenset({"validating", "in_progress"})
"""Statuses of a batch that runs lines: claiming one reserves lines of its tenant's quota."""


class LeaseLostError(RuntimeError):
    """The runner no longer owns the batch; it must stop working on it."""


class StoreUnavailableError(RuntimeError):
    """The store's database cannot be reached now; a later attempt may succeed."""

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Lease:
    """A runner's hold on a batch: whose batch it is, and how many of its lines the runner may
    have in flight (0 for a batch that runs none, e.g. one waiting for its result handlers)."""

    batch_id: str
    tenant: str | None
    lines: int


@dataclass(frozen=True)
class WaitingBatch:
    """A batch no runner holds that has work left."""

    id: str
    tenant: str | None
    runs_lines: bool
    """Whether a claim of it reserves lines (see RUNNING_STATUSES)."""
    tenant_lines: int
    """Lines its tenant has in flight now, over every runner."""


class JobStore(Protocol):
    """`tenant`, where a method takes one, limits it to the files and batches of that API key
    name (what is not theirs does not exist for them); None means every tenant's."""

    async def create_file(self, record: FileRecord) -> None: ...

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None: ...

    async def list_files(
        self,
        purpose: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        tenant: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        """A page of the files not expired, ordered by (created_at, id), and whether more
        follow it."""
        ...

    async def delete_file(self, file_id: str) -> bool: ...

    async def expired_files(self, limit: int) -> list[FileRecord]:
        """Up to `limit` files past their `expires_at`, soonest expired first, leaving out the
        input of any batch that has not ended (it is deleted once the batch ends)."""
        ...

    async def create_batch(self, batch: BatchObject, tenant: str | None = None) -> None: ...

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchObject | None: ...

    async def list_batches(
        self, limit: int, after: str | None, tenant: str | None = None
    ) -> tuple[list[BatchObject], bool]:
        """A page, newest first, starting after the batch `after`; and whether more follow."""
        ...

    async def batches_using_file(self, file_id: str) -> list[BatchObject]:
        """Batches not yet terminal whose input file is `file_id`."""
        ...

    async def update_batch(
        self, batch_id: str, change: BatchChange, owner: str | None = None
    ) -> BatchObject | None:
        """Applies `change` atomically and returns the batch as stored afterwards (None when the
        batch does not exist). With `owner`, raises LeaseLostError unless `owner` holds the
        lease."""
        ...

    async def claim_batch(
        self,
        batch_id: str,
        owner: str,
        lease_s: float,
        lines: int = 1,
        tenant_lines: int | None = None,
    ) -> Lease | None:
        """Takes the lease for `lease_s` when it is free or expired, or renews `owner`'s
        (keeping its lines). A batch that runs lines gets up to `lines` of them, within what its
        tenant's other live leases leave of `tenant_lines` (no quota when None); with none left
        it is not taken."""
        ...

    async def release_batch(self, batch_id: str, owner: str) -> None: ...

    async def claimable_batches(self, tenant_lines: int | None = None) -> list[WaitingBatch]:
        """Batches with work left whose lease is free or expired: those not terminal, and
        terminal ones whose result handlers have not all run (`mark_handled`). Batches that
        only wait for handlers come first; then those of tenants with the fewest lines in
        flight, then of the tenant served least recently, oldest first. Batches whose tenant
        has no lines left of `tenant_lines` are left out."""
        ...

    async def mark_handled(self, batch_id: str, owner: str) -> None:
        """Records that the terminal batch's result handlers ran; it is never claimable again."""
        ...

    async def add_chunk(
        self, batch_id: str, owner: str, chunk: ChunkRecord, change: BatchChange
    ) -> None:
        """Stores the checkpoint and applies `change` in one transaction, under `owner`'s lease
        (LeaseLostError otherwise). A chunk index stored once is never replaced."""
        ...

    async def finish_batch(
        self, batch_id: str, owner: str, files: Sequence[FileRecord], change: BatchChange
    ) -> BatchObject:
        """Applies `change` and records the batch's output files with it (a file stored already
        is kept) in one transaction, under `owner`'s lease (LeaseLostError otherwise); when
        `change` leaves the batch as it is, records nothing. The batch as stored afterwards."""
        ...

    async def chunks(self, batch_id: str) -> list[ChunkRecord]:
        """The batch's checkpoints, by index."""
        ...

    async def close(self) -> None: ...
