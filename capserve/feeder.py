"""The feeder: a stream of rows sent as requests the service accepts, answers back in order.

Rows are split at the service's per-request limits (texts and body bytes, from
`/v1/capabilities`); at most `concurrency` requests are in flight, and answers are handed back
in input order, so a writer can append them and an interrupted run can resume by counting what
it wrote. Each request carries an `X-Request-ID` naming its rows and a `traceparent` in the run's
trace. A request the service refuses for its content (400, 413, 422) is split in halves and sent
again until the rows at fault stand alone; each of those gets its error, every other row its
answer. Anything else the service says (a bad key, a server error, a wait longer than the retry
policy allows) stops the feed.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from capserve.client import AsyncClient, InvalidRequestError, Limits, Strategy
from capserve.rows import Outcome, Row, RowError
from capserve.tracing import TraceParent

# The part of a classify body around its texts: keys, capabilities, strategy.
BODY_OVERHEAD_BYTES = 4096


def chunked(rows: Iterable[Row], limits: Limits, items_per_request: int) -> Iterator[list[Row]]:
    """Consecutive rows in requests of at most `items_per_request` texts and the service's
    body size (texts JSON-encoded as httpx sends them, UTF-8)."""
    max_items = min(items_per_request, limits.max_items_per_request)
    budget = limits.max_body_bytes - BODY_OVERHEAD_BYTES
    chunk: list[Row] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row.text, ensure_ascii=False).encode()) + 1
        if chunk and (len(chunk) == max_items or size + row_size > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_size
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Request:
    """What every classify request of a feed asks for."""

    capabilities: Sequence[str] | None = None
    strategy: Strategy | None = None


class Feeder:
    def __init__(
        self,
        client: AsyncClient,
        request: Request,
        concurrency: int,
        trace: TraceParent,
        request_id_prefix: str,
    ) -> None:
        self._client = client
        self._request = request
        self._concurrency = concurrency
        self._trace = trace
        self._prefix = request_id_prefix

    async def classify(self, rows: Sequence[Row]) -> list[Outcome]:
        """An outcome per row: its answer, or the service's reason for refusing it."""
        try:
            response = await self._client.classify(
                [row.text for row in rows],
                capabilities=self._request.capabilities,
                strategy=self._request.strategy,
                request_id=f"{self._prefix}-r{rows[0].number}-{rows[-1].number}",
                traceparent=self._trace.child(),
            )
        except InvalidRequestError as error:
            if len(rows) == 1:
                return [RowError(error.code, error.message)]
            half = len(rows) // 2
            first, second = await asyncio.gather(
                self.classify(rows[:half]), self.classify(rows[half:])
            )
            return first + second
        return list(response.results)

    async def feed(
        self, chunks: Iterable[list[Row]]
    ) -> AsyncIterator[tuple[list[Row], list[Outcome]]]:
        """Each chunk with its outcomes, in input order. The next chunk starts as the oldest
        in flight is handed back, so at most `concurrency` are sent or held at once."""
        pending: deque[tuple[list[Row], asyncio.Task[list[Outcome]]]] = deque()
        upcoming = iter(chunks)
        try:
            while True:
                while len(pending) < self._concurrency:
                    chunk = next(upcoming, None)
                    if chunk is None:
                        break
                    pending.append((chunk, asyncio.create_task(self.classify(chunk))))
                if not pending:
                    return
                chunk, task = pending.popleft()
                yield chunk, await task
        finally:
            for _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
