"""The job store, opened when first needed rather than when a replica starts.

The ingress and the batch runner start while the store's database is down: online traffic needs
no store. Until the store opens, each use raises `StoreUnavailableError` saying when to try
again; one attempt runs at a time, and after a failed one the next waits `retry_s`, so an outage
is answered at once instead of each caller waiting out a connect timeout. Once open, the store
reconnects by itself (see `SqlJobStore`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from batchjobs.sql_store import open_store
from batchjobs.store import JobStore, StoreUnavailableError

logger = logging.getLogger("capserve.batch")


class StoreOpener:
    def __init__(
        self,
        url: str,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
        opener: Callable[[str], Awaitable[JobStore]] = open_store,
    ) -> None:
        self._url = url
        self._retry_s = retry_s
        self._clock = clock
        self._opener = opener
        self._store: JobStore | None = None
        self._failed_at = -math.inf
        self._attempt = asyncio.Lock()

    async def get(self) -> JobStore:
        """The open store; raises StoreUnavailableError while it cannot be opened."""
        if self._store is not None:
            return self._store
        async with self._attempt:
            if self._store is not None:
                return self._store
            wait_s = self._failed_at + self._retry_s - self._clock()
            if wait_s > 0:
                raise self._unavailable(wait_s)
            try:
                self._store = await self._opener(self._url)
            except StoreUnavailableError as error:
                self._failed_at = self._clock()
                logger.warning(
                    "job store: %s (%s); retrying in %g s", error, error.__cause__, self._retry_s
                )
                raise self._unavailable(self._retry_s) from None
            return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    @staticmethod
    def _unavailable(retry_after_s: float) -> StoreUnavailableError:
        return StoreUnavailableError(
            "the batch job store is not reachable; files and batches are unavailable until it "
            f"is (online endpoints are not affected): retry in {math.ceil(retry_after_s)} s",
            retry_after_s,
        )
