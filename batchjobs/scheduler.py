"""A batch runner's slots, filled fairly across tenants from the store.

Each pass takes waiting batches in the store's fair order (tenants with the fewest lines in
flight, then the one served least recently) into the runner's free slots; the store refuses a
batch whose tenant has used its quota of lines in flight, counted over every runner replica. When
the slots are full and a tenant with nothing running waits, a running batch of another tenant
gives up its slot at its next chunk boundary and is taken again later, so one tenant's long
batches delay another's by at most a chunk, not by their whole length.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from batchjobs.executor import BatchExecutor, failed
from batchjobs.schemas import BatchError
from batchjobs.store import JobStore, Lease, StoreUnavailableError

logger = logging.getLogger("capserve.batch")
# A batch whose run raises (not a crash: an error) this often is failed rather than retried.
MAX_RUN_ERRORS = 3


class BatchScheduler:
    def __init__(
        self,
        store: JobStore,
        executor: BatchExecutor,
        max_concurrent_batches: int,
        tenant_lines: int | None,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._executor = executor
        self._slots = max_concurrent_batches
        self._tenant_lines = tenant_lines
        self._on_change = on_change
        """Called whenever a batch starts or stops here."""
        self._clock = clock
        self._active: dict[str, asyncio.Task[None]] = {}
        self._run_errors: collections.Counter[str] = collections.Counter()

    @property
    def active(self) -> list[str]:
        return sorted(self._active)

    async def take_work(self) -> None:
        """Starts the waiting batches this runner has room for, fairest first, one per tenant
        a pass: the store's order is fair only as of the pass's start."""
        waiting = await self._store.claimable_batches(self._tenant_lines)
        tenants: set[str | None] = set()
        for batch in waiting:
            if len(self._active) >= self._slots:
                return
            if batch.id in self._active or batch.tenant in tenants:
                continue
            tenants.add(batch.tenant)
            self._active[batch.id] = asyncio.create_task(self._run(batch.id))
            self._on_change()

    async def stop(self) -> None:
        """Stops the batches running here; each releases its lease, so another runner resumes
        it from its last checkpoint at once."""
        running = list(self._active.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _should_yield(self, lease: Lease) -> bool:
        if len(self._active) < self._slots:
            return False
        waiting = await self._store.claimable_batches(self._tenant_lines)
        return any(
            batch.runs_lines and batch.tenant_lines == 0 and batch.tenant != lease.tenant
            for batch in waiting
        )

    async def _run(self, batch_id: str) -> None:
        try:
            await self._executor.run(batch_id, self._should_yield)
        except StoreUnavailableError as error:
            # Not the batch's fault: it resumes from its last checkpoint once the store is back.
            logger.warning("batch %s: stopped, the store is unavailable: %s", batch_id, error)
        except Exception as error:
            logger.exception("batch %s: run failed", batch_id)
            self._run_errors[batch_id] += 1
            if self._run_errors[batch_id] >= MAX_RUN_ERRORS:
                await self._fail(batch_id, f"{type(error).__name__}: {error}")
        finally:
            del self._active[batch_id]
            self._on_change()

    async def _fail(self, batch_id: str, reason: str) -> None:
        error = BatchError(
            code="internal_error",
            message=f"the batch could not be run ({reason}); the runner's log has details",
        )
        await self._store.update_batch(batch_id, failed([error], int(self._clock())))
