"""Runs one batch to a terminal state, in chunks, so that a crash loses no accepted line and
repeats none in the output.

A chunk's output and error lines are written to files of their own and fsynced; only then is the
chunk's checkpoint stored (the store's `add_chunk`), in the same transaction as the batch's counts.
After a crash the batch resumes at the first chunk without a checkpoint, and the final files are
the checkpointed chunk files concatenated in order: every custom_id exactly once. The runner holds
a lease on the batch while it works and renews it; a runner that lost its lease stops, and its
writes are refused, so two runners never write one batch. The lease says how many lines may be in
flight (the tenant's quota, see `store.py`); between chunks the runner may hand its turn to
another tenant (`YieldCheck`), and the batch carries on from its next chunk when taken again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, RetryCallState, wait_exponential

from batchjobs.files import FileStorage, write_durably
from batchjobs.handlers import BatchResult
from batchjobs.json_depth import DEFAULT_MAX_JSON_DEPTH
from batchjobs.lines import NumberedLine, check_input, read_tasks
from batchjobs.schemas import (
    BatchError,
    BatchErrors,
    BatchObject,
    BatchUsage,
    ChunkRecord,
    FileObject,
    FileRecord,
    LineError,
    LineResponse,
    OutputLine,
    RequestCounts,
)
from batchjobs.store import JobStore, Lease, LeaseLostError, StoreUnavailableError
from capabilities.base import BatchLine
from capserve.tracing import TraceParent

logger = logging.getLogger("capserve.batch")

# What a later attempt may fix: the engine overloaded, restarting or briefly unreachable.
RETRIED_STATUSES = frozenset({429, 503, 504})
# Other server errors are retried a little too: a replica that died mid-call answers 500 once,
# while a line that trips a bug fails every time and must not hold the batch up for long.
SERVER_ERROR_ATTEMPTS = 3
# Between a line's attempts: 0.5 s, doubling, at most 10 s.
LINE_BACKOFF = wait_exponential(multiplier=0.5, max=10.0)


class LineOutcome(BaseModel):
    """The answer to one line: an HTTP status, a JSON body, and the tokens it used."""

    status_code: int
    body: dict[str, Any]
    usage: BatchUsage = BatchUsage()


class LineHandler(Protocol):
    """Answers batch lines as the online endpoint would."""

    async def run(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        tenant: str | None,
        line: BatchLine,
        traceparent: str,
    ) -> LineOutcome:
        """Answers one line of `tenant`'s batch, counted against that tenant's budget. `line`
        names the batch line, which stays the same when the line runs again after a crash (the
        request id does not): what effects such as alerts derive their ids from."""
        ...

    def default_model(self, endpoint: str) -> str | None:
        """The model that answers `endpoint` when lines do not name one."""
        ...


class ExecutionSettings(BaseModel):
    chunk_size: int = Field(default=5000, gt=0, description="Lines per durable checkpoint.")
    max_concurrent_lines: int = Field(
        default=64,
        gt=0,
        description="Lines of one batch in flight at once: the share of the engine a batch may "
        "take, which keeps online traffic ahead of it.",
    )
    max_lines_per_tenant: int | None = Field(
        default=128,
        gt=0,
        description="Lines of one tenant (API key name) in flight at once over all its batches "
        "and every runner replica; its further batches wait. None: no quota.",
    )
    max_lines: int = Field(default=50_000, gt=0)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(
        default=DEFAULT_MAX_JSON_DEPTH,
        gt=0,
        description="How deep a line's body may nest arrays and objects; checked when the batch "
        "is validated and again, with the same limit, when its lines are read to run.",
    )
    lease_s: float = Field(default=30, gt=0, description="How long a silent runner owns a batch.")
    retry_window_s: float = Field(
        default=300, ge=0, description="How long a line is retried on 429/503/504 before failing."
    )
    progress_interval_s: float = Field(
        default=1.0, gt=0, description="How often live counts are stored and cancel is checked."
    )


ResultHandlers = Callable[[BatchResult], Awaitable[None]]
YieldCheck = Callable[[Lease], Awaitable[bool]]
"""Asked between chunks whether the batch should give its runner's slot to other work now."""


class BatchProgress(Protocol):
    """Told what the executor got done, as it happens (the batch runner exports it as metrics)."""

    def lines_done(self, completed: int, failed: int) -> None:
        """A chunk's lines are checkpointed; `failed` includes expired lines."""
        ...

    def batch_ended(self, status: str) -> None:
        """The batch ended with `status` and was handed to the result handlers: once per batch."""
        ...


def output_file_id(batch_id: str, kind: str) -> str:
    """Derived from the batch, so finalizing twice (after a crash) makes the same file."""
    return f"file-{hashlib.sha256(f'{batch_id}:{kind}'.encode()).hexdigest()[:32]}"


@dataclass
class ChunkResult:
    """The lines of one chunk that ran, in input order, plus those the window closed on."""

    outputs: list[tuple[NumberedLine, OutputLine, bool]] = field(default_factory=list)
    usage: BatchUsage = field(default_factory=BatchUsage)
    expired: list[NumberedLine] = field(default_factory=list)


class StopReason:
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class BatchExecutor:
    def __init__(
        self,
        store: JobStore,
        storage: FileStorage,
        lines: LineHandler,
        settings: ExecutionSettings,
        result_handlers: ResultHandlers,
        owner: str,
        clock: Callable[[], float] = time.time,
        progress: BatchProgress | None = None,
    ) -> None:
        self._store = store
        self._storage = storage
        self._lines = lines
        self._settings = settings
        self._result_handlers = result_handlers
        self._owner = owner
        self._clock = clock
        self._progress = progress

    async def run(self, batch_id: str, should_yield: YieldCheck | None = None) -> bool:
        """Takes the batch (False when another runner holds it, or its tenant has no lines
        left) and drives it to the end, or until `should_yield` says so between chunks."""
        lease = await self._claim(batch_id)
        if lease is None:
            return False
        work = asyncio.current_task()
        assert work is not None
        renewal = asyncio.create_task(self._renew_lease(batch_id, work))
        try:
            await self._drive(lease, should_yield)
        except LeaseLostError:
            logger.warning("batch %s: lease lost; another runner carries on", batch_id)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            with contextlib.suppress(LeaseLostError):
                await self._store.release_batch(batch_id, self._owner)
        return True

    async def _claim(self, batch_id: str) -> Lease | None:
        return await self._store.claim_batch(
            batch_id,
            self._owner,
            self._settings.lease_s,
            self._settings.max_concurrent_lines,
            self._settings.max_lines_per_tenant,
        )

    async def _renew_lease(self, batch_id: str, work: asyncio.Task[Any]) -> None:
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            try:
                renewed = await self._claim(batch_id)
            except StoreUnavailableError:
                # The next renewal tries again; a write after the lease ran out is refused.
                continue
            if renewed is None:
                work.cancel()
                return

    async def _drive(self, lease: Lease, should_yield: YieldCheck | None) -> None:
        batch = await self._get(lease.batch_id)
        if batch.status == "validating":
            batch = await self._validate(batch)
        if batch.status == "in_progress":
            executed = await self._execute(batch, lease, should_yield)
            if executed is None:
                return
            batch = executed
        if batch.status in ("finalizing", "cancelling", "in_progress"):
            batch = await self._finalize(batch)
        if batch.terminal:
            await self._result_handlers(await self._result_of(batch))
            await self._store.mark_handled(batch.id, self._owner)
            if self._progress is not None:
                self._progress.batch_ended(batch.status)

    async def _get(self, batch_id: str) -> BatchObject:
        batch = await self._store.get_batch(batch_id)
        if batch is None:
            raise LookupError(f"batch {batch_id} does not exist")
        return batch

    async def _update(
        self, batch_id: str, change: Callable[[BatchObject], BatchObject | None]
    ) -> BatchObject:
        batch = await self._store.update_batch(batch_id, change, owner=self._owner)
        assert batch is not None
        return batch

    async def _validate(self, batch: BatchObject) -> BatchObject:
        now = int(self._clock())
        record = await self._store.get_file(batch.input_file_id)
        if record is None:
            errors = [
                BatchError(
                    code="file_not_found",
                    message=f"input file {batch.input_file_id} was deleted before the batch ran",
                    param="input_file_id",
                )
            ]
            return await self._update(batch.id, failed(errors, now))
        check = await asyncio.to_thread(
            check_input,
            Path(record.path),
            batch.endpoint,
            self._settings.max_lines,
            self._settings.max_file_bytes,
            self._settings.max_json_depth,
        )
        if not check.ok:
            return await self._update(batch.id, failed(check.reported_errors(), now))
        model = check.model or self._lines.default_model(batch.endpoint)

        def start(current: BatchObject) -> BatchObject | None:
            if current.status != "validating":
                return None
            return current.model_copy(
                update={
                    "status": "in_progress",
                    "in_progress_at": now,
                    "model": model,
                    "request_counts": RequestCounts(total=check.tasks),
                }
            )

        return await self._update(batch.id, start)

    async def _execute(
        self, batch: BatchObject, lease: Lease, should_yield: YieldCheck | None
    ) -> BatchObject | None:
        """Runs the batch's chunks; the batch as it is after them, or None when it yielded its
        turn with lines left."""
        input_record = await self._store.get_file(batch.input_file_id)
        if input_record is None:
            return await self._update(batch.id, failed([_input_gone(batch)], int(self._clock())))
        chunks = await self._store.chunks(batch.id)
        done = sum(chunk.lines for chunk in chunks)
        tasks = read_tasks(
            Path(input_record.path), start=done, max_depth=self._settings.max_json_depth
        )
        index = len(chunks)
        stop: str | None
        while done < batch.request_counts.total:
            if batch.expires_at is not None and self._clock() >= batch.expires_at:
                result, stop = ChunkResult(expired=list(tasks)), StopReason.EXPIRED
            else:
                chunk_tasks = list(itertools.islice(tasks, self._settings.chunk_size))
                result, stop = await self._run_chunk(batch, lease, chunk_tasks, chunks)
                if stop == StopReason.EXPIRED:
                    result.expired.extend(tasks)
            chunk = await self._write_chunk(batch.id, index, done, result)
            chunks.append(chunk)
            await self._store.add_chunk(batch.id, self._owner, chunk, _counted(chunks))
            if self._progress is not None:
                self._progress.lines_done(chunk.completed, chunk.failed)
            done += chunk.lines
            index += 1
            if stop is not None:
                break
            more = done < batch.request_counts.total
            if more and should_yield is not None and await should_yield(lease):
                logger.info(
                    "batch %s: gives its turn to another tenant after chunk %d", batch.id, index - 1
                )
                return None
        batch = await self._get(batch.id)
        if batch.status == "in_progress" and done >= batch.request_counts.total:
            now = int(self._clock())
            batch = await self._update(batch.id, _to("finalizing", "finalizing_at", now))
        return batch

    async def _run_chunk(
        self,
        batch: BatchObject,
        lease: Lease,
        chunk_tasks: list[NumberedLine],
        chunks: list[ChunkRecord],
    ) -> tuple[ChunkResult, str | None]:
        """Runs the chunk's lines, at most the lease's lines at a time, until all are done or
        the batch is cancelled or its window closes; then the lines that finished."""
        limit = asyncio.Semaphore(max(1, lease.lines))
        results: dict[int, tuple[OutputLine, bool, BatchUsage]] = {}

        async def run_task(task: NumberedLine) -> None:
            async with limit:
                results[task.index] = await self._run_line(batch, task, lease.tenant)

        running = [asyncio.create_task(run_task(task)) for task in chunk_tasks]
        base = _totals(chunks)
        stop: str | None = None
        try:
            while True:
                finished, _ = await asyncio.wait(
                    running, timeout=self._settings.progress_interval_s
                )
                if len(finished) == len(running):
                    break
                stop = await self._report_progress(batch, base, results)
                if stop is not None:
                    break
        finally:
            for pending in running:
                pending.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        result = ChunkResult()
        for task in chunk_tasks:
            if task.index in results:
                output, succeeded, usage = results[task.index]
                result.outputs.append((task, output, succeeded))
                result.usage = result.usage.plus(usage)
            elif stop == StopReason.EXPIRED:
                result.expired.append(task)
        return result, stop

    async def _report_progress(
        self,
        batch: BatchObject,
        base: RequestCounts,
        results: dict[int, tuple[OutputLine, bool, BatchUsage]],
    ) -> str | None:
        """Stores live counts; says whether the batch was cancelled or its window closed."""
        succeeded = sum(1 for _, ok, _ in results.values() if ok)
        counts = RequestCounts(
            total=batch.request_counts.total,
            completed=base.completed + succeeded,
            failed=base.failed + len(results) - succeeded,
        )

        def progress(current: BatchObject) -> BatchObject | None:
            if current.status != "in_progress":
                return None
            return current.model_copy(update={"request_counts": counts})

        current = await self._update(batch.id, progress)
        if current.status == "cancelling":
            return StopReason.CANCELLED
        if batch.expires_at is not None and self._clock() >= batch.expires_at:
            return StopReason.EXPIRED
        return None

    async def _run_line(
        self, batch: BatchObject, task: NumberedLine, tenant: str | None
    ) -> tuple[OutputLine, bool, BatchUsage]:
        request_id = f"req_{uuid.uuid4().hex}"
        line = BatchLine(batch_id=batch.id, custom_id=task.line.custom_id)
        # Batches stored before they had a trace get one per line.
        traceparent = str((TraceParent.parse(batch.traceparent) or TraceParent.new()).child())
        # From the first answer: the wait for the tenant's budget is not the engine's outage.
        deadline: float | None = None

        def retried(state: RetryCallState) -> bool:
            nonlocal deadline
            # _answer turns errors into answers: only a cancelled line has no answer.
            if state.outcome is None or state.outcome.failed:
                return False
            if deadline is None:
                deadline = self._clock() + self._settings.retry_window_s
            status = state.outcome.result().status_code
            transient = status in RETRIED_STATUSES and self._clock() < deadline
            server_error = status >= 500 and state.attempt_number < SERVER_ERROR_ATTEMPTS
            return transient or server_error

        retrying = AsyncRetrying(retry=retried, wait=LINE_BACKOFF)
        outcome: LineOutcome = await retrying(
            self._answer, batch.endpoint, task, request_id, tenant, line, traceparent
        )
        succeeded = 200 <= outcome.status_code < 300
        output = OutputLine(
            id=f"batch_req_{uuid.uuid4().hex}",
            custom_id=task.line.custom_id,
            response=LineResponse(
                status_code=outcome.status_code,
                request_id=request_id,
                traceparent=traceparent,
                body=outcome.body,
            ),
            error=None,
        )
        return output, succeeded, outcome.usage

    async def _answer(
        self,
        endpoint: str,
        task: NumberedLine,
        request_id: str,
        tenant: str | None,
        line: BatchLine,
        traceparent: str,
    ) -> LineOutcome:
        """The line's answer; an error raised for it is a 500 answer, never the batch's end."""
        try:
            return await self._lines.run(
                endpoint, task.line.body, request_id, tenant, line, traceparent
            )
        except Exception as error:  # one bad line must not stop the batch
            logger.exception(
                "batch line %s failed (traceparent %s)", task.line.custom_id, traceparent
            )
            return LineOutcome(
                status_code=500,
                body={
                    "error": {
                        "message": f"internal error: {type(error).__name__}",
                        "type": "server_error",
                        "param": None,
                        "code": "internal_error",
                    }
                },
            )

    async def _write_chunk(
        self,
        batch_id: str,
        index: int,
        first_line: int,
        result: ChunkResult,
    ) -> ChunkRecord:
        """Writes the chunk's output and error lines durably; its checkpoint record. The writes
        and fsyncs run in a thread: the lease renewal shares this event loop and must not wait
        behind a slow disk."""
        output_lines = [line for _, line, ok in result.outputs if ok]
        error_lines = [line for _, line, ok in result.outputs if not ok]
        error_lines += [_expired_line(task) for task in result.expired]
        output_path = error_path = None
        if output_lines:
            output_path = self._storage.chunk_path(batch_id, index, "output", self._owner)
            await asyncio.to_thread(write_durably, output_path, _jsonl(output_lines))
        if error_lines:
            error_path = self._storage.chunk_path(batch_id, index, "errors", self._owner)
            await asyncio.to_thread(write_durably, error_path, _jsonl(error_lines))
        return ChunkRecord(
            index=index,
            first_line=first_line,
            # What the checkpoint accounts for: every line that ran and every expired one. A
            # cancelled chunk's unrun lines are in no file, and nothing resumes after a cancel.
            lines=len(result.outputs) + len(result.expired),
            output_path=str(output_path) if output_path else None,
            error_path=str(error_path) if error_path else None,
            completed=len(output_lines),
            failed=len(error_lines),
            expired=len(result.expired),
            usage=result.usage,
        )

    async def _finalize(self, batch: BatchObject) -> BatchObject:
        chunks = await self._store.chunks(batch.id)
        assembled = [await self._assemble(batch, chunks, kind) for kind in ("output", "errors")]
        output, errors = (record.file.id if record else None for record in assembled)
        expired = any(chunk.expired for chunk in chunks)
        now = int(self._clock())

        def finish(current: BatchObject) -> BatchObject | None:
            if current.terminal:
                return None
            if current.status == "cancelling":
                status, stamp = "cancelled", "cancelled_at"
            elif expired:
                status, stamp = "expired", "expired_at"
            else:
                status, stamp = "completed", "completed_at"
            return current.model_copy(
                update={
                    "status": status,
                    stamp: now,
                    "output_file_id": output,
                    "error_file_id": errors,
                    "request_counts": _totals(chunks, current.request_counts.total),
                    "usage": _usage(chunks),
                }
            )

        # The output files appear with the terminal status, under the lease, or not at all.
        files = [record for record in assembled if record is not None]
        batch = await self._store.finish_batch(batch.id, self._owner, files, finish)
        # Chunk files are kept until the batch is terminal: a crash before this point
        # reassembles from them. Those no checkpoint names (a runner died before storing it)
        # go too; the storage cleanup removes any that a crash here leaves.
        await asyncio.to_thread(self._storage.remove_chunk_files, batch.id)
        return batch

    async def _assemble(
        self, batch: BatchObject, chunks: list[ChunkRecord], kind: str
    ) -> FileRecord | None:
        """The batch's `kind` file assembled from its chunks; its record, not yet stored."""
        parts = [
            Path(path)
            for chunk in chunks
            if (path := chunk.output_path if kind == "output" else chunk.error_path) is not None
        ]
        if not parts:
            return None
        destination = self._storage.batch_folder(batch.id) / f"{kind}.jsonl"
        size = await asyncio.to_thread(FileStorage.assemble, parts, destination)
        # Output belongs to whoever owns the input.
        source = await self._store.get_file(batch.input_file_id)
        created_at = int(self._clock())
        policy = batch.output_expires_after
        return FileRecord(
            file=FileObject(
                id=output_file_id(batch.id, kind),
                bytes=size,
                created_at=created_at,
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                # OpenAI's anchor `created_at` is the output file's, not the batch's.
                expires_at=created_at + policy.seconds if policy else None,
            ),
            path=str(destination),
            tenant=source.tenant if source else None,
        )

    async def _result_of(self, batch: BatchObject) -> BatchResult:
        paths: dict[str, str | None] = {}
        for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            record = await self._store.get_file(file_id) if file_id else None
            paths[kind] = record.path if record else None
        return BatchResult(batch=batch, output_path=paths["output"], error_path=paths["errors"])


def _jsonl(lines: list[OutputLine]) -> bytes:
    return b"".join(line.model_dump_json().encode() + b"\n" for line in lines)


def _expired_line(task: NumberedLine) -> OutputLine:
    return OutputLine(
        id=f"batch_req_{uuid.uuid4().hex}",
        custom_id=task.line.custom_id,
        response=None,
        error=LineError(
            code="batch_expired",
            message="This request could not be executed before the completion window expired.",
        ),
    )


def _input_gone(batch: BatchObject) -> BatchError:
    return BatchError(
        code="file_not_found",
        message=f"input file {batch.input_file_id} was deleted while the batch ran",
        param="input_file_id",
    )


def failed(errors: list[BatchError], now: int) -> Callable[[BatchObject], BatchObject | None]:
    """The change that fails a batch that has not ended."""

    def fail(current: BatchObject) -> BatchObject | None:
        if current.terminal:
            return None
        return current.model_copy(
            update={"status": "failed", "failed_at": now, "errors": BatchErrors(data=errors)}
        )

    return fail


def _to(status: str, stamp: str, now: int) -> Callable[[BatchObject], BatchObject | None]:
    def move(current: BatchObject) -> BatchObject | None:
        if current.status != "in_progress":
            return None
        return current.model_copy(update={"status": status, stamp: now})

    return move


def _totals(chunks: list[ChunkRecord], total: int = 0) -> RequestCounts:
    return RequestCounts(
        total=total,
        completed=sum(chunk.completed for chunk in chunks),
        failed=sum(chunk.failed for chunk in chunks),
    )


def _usage(chunks: list[ChunkRecord]) -> BatchUsage:
    usage = BatchUsage()
    for chunk in chunks:
        usage = usage.plus(chunk.usage)
    return usage


def _counted(chunks: list[ChunkRecord]) -> Callable[[BatchObject], BatchObject | None]:
    """The batch's counts and usage as the checkpoints say, whatever live progress said."""

    def count(current: BatchObject) -> BatchObject | None:
        return current.model_copy(
            update={
                "request_counts": _totals(chunks, current.request_counts.total),
                "usage": _usage(chunks),
            }
        )

    return count
