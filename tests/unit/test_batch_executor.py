"""Chunked, durable batch execution on a real SQLite store with a fake line handler: every
custom_id exactly once after crashes, cancel, expiry, retries and validation failures."""

import asyncio
import collections
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tenacity import wait_none

from batchjobs import executor as executor_module
from batchjobs.executor import (
    SERVER_ERROR_ATTEMPTS,
    BatchExecutor,
    ExecutionSettings,
    LineOutcome,
)
from batchjobs.files import FileStorage, new_file_id, write_durably
from batchjobs.handlers import BatchResult
from batchjobs.schemas import (
    BatchObject,
    ChunkRecord,
    ExpiresAfter,
    FileObject,
    FileRecord,
    expiry_of,
)
from batchjobs.sql_store import open_store
from batchjobs.store import JobStore, Lease
from capabilities.base import BatchLine
from capserve.tracing import TraceParent

ENDPOINT = "/v1/classify"


class FakeLines:
    """Answers `{"texts": [t]}` with its label; "bad" texts get a 400, "flaky" a 503 first."""

    def __init__(
        self, delay_s: float = 0.0, flaky_failures: int = 0, hang_after: int | None = None
    ) -> None:
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.tenants: list[str | None] = []
        self.batch_lines: list[BatchLine] = []
        self.in_flight: collections.Counter[str | None] = collections.Counter()
        self.most_in_flight: collections.Counter[str | None] = collections.Counter()
        self.traces: list[str] = []
        self.flaky_failures = flaky_failures
        self.hang_after = hang_after

    async def run(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        tenant: str | None,
        line: BatchLine,
        traceparent: str,
    ) -> LineOutcome:
        text = body["texts"][0]
        self.calls.append(text)
        self.tenants.append(tenant)
        self.batch_lines.append(line)
        self.traces.append(traceparent)
        self.in_flight[tenant] += 1
        self.most_in_flight[tenant] = max(self.most_in_flight[tenant], self.in_flight[tenant])
        try:
            if self.hang_after is not None and len(self.calls) > self.hang_after:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight[tenant] -= 1
        if text == "bad":
            return LineOutcome(status_code=400, body={"error": {"message": "bad text"}})
        if text == "flaky" and self.flaky_failures > 0:
            self.flaky_failures -= 1
            return LineOutcome(status_code=503, body={"error": {"message": "engine restarting"}})
        return LineOutcome(status_code=200, body={"label": f"label-{text}"})

    def default_model(self, endpoint: str) -> str | None:
        return "fake-model"


class Handled:
    def __init__(self) -> None:
        self.results: list[BatchResult] = []

    async def __call__(self, result: BatchResult) -> None:
        self.results.append(result)


def settings(**changes: Any) -> ExecutionSettings:
    values = {"chunk_size": 5, "progress_interval_s": 0.02, "lease_s": 5, "retry_window_s": 5}
    values.update(changes)
    return ExecutionSettings(**values)


class Setup:
    def __init__(self, tmp_path: Path, store: JobStore) -> None:
        self.tmp_path = tmp_path
        self.store = store
        self.storage = FileStorage(tmp_path / "files")
        self.handled = Handled()

    def executor(
        self,
        lines: FakeLines,
        owner: str = "runner-a",
        clock: Callable[[], float] = time.time,
        **changes: Any,
    ) -> BatchExecutor:
        return BatchExecutor(
            self.store, self.storage, lines, settings(**changes), self.handled, owner, clock=clock
        )

    async def batch(
        self,
        texts: list[str],
        raw_lines: list[str] | None = None,
        tenant: str | None = None,
        output_expires_after: ExpiresAfter | None = None,
        traceparent: str | None = None,
    ) -> BatchObject:
        file_id = new_file_id()
        path = self.storage.upload_path(file_id)
        records = raw_lines or [
            json.dumps(
                {"custom_id": f"id-{i}", "method": "POST", "url": ENDPOINT, "body": {"texts": [t]}}
            )
            for i, t in enumerate(texts)
        ]
        path.write_text("\n".join(records) + "\n")
        now = int(time.time())
        await self.store.create_file(
            FileRecord(
                file=FileObject(
                    id=file_id,
                    bytes=path.stat().st_size,
                    created_at=now,
                    filename="in.jsonl",
                    purpose="batch",
                ),
                path=str(path),
            )
        )
        batch = BatchObject(
            id=f"batch_{file_id}",
            endpoint=ENDPOINT,
            input_file_id=file_id,
            completion_window="24h",
            status="validating",
            created_at=now,
            expires_at=expiry_of(now, "24h"),
            output_expires_after=output_expires_after,
            traceparent=traceparent,
        )
        await self.store.create_batch(batch, tenant)
        return batch

    async def lines_of(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        record = await self.store.get_file(file_id)
        assert record is not None
        return [json.loads(line) for line in Path(record.path).read_text().splitlines()]


@pytest.fixture
async def setup(tmp_path: Path):
    environment = Setup(tmp_path, await open_store(f"sqlite:///{tmp_path / 'jobs.db'}"))
    yield environment
    await environment.store.close()


async def test_a_batch_runs_in_chunks_to_completion(setup: Setup) -> None:
    texts = [f"t{i}" for i in range(23)]
    texts[7] = "bad"
    batch = await setup.batch(texts)
    assert await setup.executor(FakeLines()).run(batch.id)

    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 23, "completed": 22, "failed": 1}
    assert done.model == "fake-model" and done.in_progress_at and done.completed_at
    output = await setup.lines_of(done.output_file_id)
    errors = await setup.lines_of(done.error_file_id)
    assert [line["custom_id"] for line in output] == [f"id-{i}" for i in range(23) if i != 7]
    assert output[0]["response"]["body"] == {"label": "label-t0"}
    assert output[0]["id"].startswith("batch_req_") and output[0]["error"] is None
    assert [line["custom_id"] for line in errors] == ["id-7"]
    assert errors[0]["response"]["status_code"] == 400
    output_file = await setup.store.get_file(done.output_file_id or "")
    assert output_file is not None and output_file.file.purpose == "batch_output"
    assert len(await setup.store.chunks(batch.id)) == 5
    # Handlers ran once, with the final files; the batch is no longer anyone's work.
    assert [r.batch.status for r in setup.handled.results] == ["completed"]
    assert setup.handled.results[0].output_path == output_file.path
    assert await setup.store.claimable_batches() == []


async def test_every_line_runs_and_is_written_as_a_span_of_the_batchs_trace(setup: Setup) -> None:
    trace = TraceParent.new()
    batch = await setup.batch(["t0", "bad", "t2"], traceparent=str(trace))
    lines = FakeLines()
    assert await setup.executor(lines).run(batch.id)

    done = await setup.store.get_batch(batch.id)
    assert done is not None
    written = await setup.lines_of(done.output_file_id) + await setup.lines_of(done.error_file_id)
    spans = [TraceParent.parse(line["response"]["traceparent"]) for line in written]
    assert {span.trace_id for span in spans if span} == {trace.trace_id}
    assert len({span.span_id for span in spans if span} - {trace.span_id}) == 3
    # The line handler (the DAG, for /v1/classify) ran each line under the span it wrote.
    assert sorted(lines.traces) == sorted(line["response"]["traceparent"] for line in written)


async def test_a_crash_mid_batch_resumes_with_every_custom_id_once(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(30)])
    # Two chunks go through; the third hangs, and the runner "crashes" in it.
    first = asyncio.create_task(
        setup.executor(FakeLines(hang_after=12), owner="runner-a").run(batch.id)
    )
    while len(await setup.store.chunks(batch.id)) < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    chunks_before = len(await setup.store.chunks(batch.id))
    assert chunks_before == 2
    # Output the crashed runner wrote without a checkpoint is never used.
    stray = setup.storage.chunk_path(batch.id, chunks_before, "output", "runner-a")
    stray.write_text('{"custom_id": "id-0"}\n')

    resumed = FakeLines()
    assert await setup.executor(resumed, owner="runner-b").run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "completed"
    custom_ids = [line["custom_id"] for line in await setup.lines_of(done.output_file_id)]
    assert custom_ids == [f"id-{i}" for i in range(30)]
    # Only lines without a checkpoint ran again.
    assert len(resumed.calls) == 30 - 5 * chunks_before
    assert done.request_counts.completed == 30
    # Once the batch has ended no chunk file is left: not the checkpointed ones, nor the one
    # the crashed runner wrote without a checkpoint.
    assert setup.storage.chunk_files(batch.id) == []
    assert not stray.exists()


async def test_cancel_stops_the_batch_with_partial_output(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(40)])
    run = asyncio.create_task(
        setup.executor(FakeLines(delay_s=0.02), max_concurrent_lines=2).run(batch.id)
    )
    while len(await setup.store.chunks(batch.id)) < 1:
        await asyncio.sleep(0.01)

    def cancel(current: BatchObject) -> BatchObject:
        return current.model_copy(update={"status": "cancelling", "cancelling_at": 1})

    await setup.store.update_batch(batch.id, cancel)
    await asyncio.wait_for(run, 10)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "cancelled" and done.cancelled_at
    custom_ids = [line["custom_id"] for line in await setup.lines_of(done.output_file_id)]
    assert 5 <= len(custom_ids) < 40 and len(set(custom_ids)) == len(custom_ids)
    assert done.request_counts.completed == len(custom_ids)
    assert [r.batch.status for r in setup.handled.results] == ["cancelled"]


async def test_a_batch_cancelled_before_it_runs_ends_cancelled_without_files(
    setup: Setup,
) -> None:
    batch = await setup.batch(["a", "b"])
    await setup.store.update_batch(
        batch.id, lambda b: b.model_copy(update={"status": "cancelling"})
    )
    lines = FakeLines()
    await setup.executor(lines).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "cancelled"
    assert done.output_file_id is None and lines.calls == []


async def test_lines_left_when_the_window_closes_are_written_as_expired(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(12)])
    clock = {"now": time.time()}
    lines = FakeLines()

    class ClosingLines(FakeLines):
        async def run(
            self,
            endpoint: str,
            body: dict[str, Any],
            request_id: str,
            tenant: str | None,
            line: BatchLine,
            traceparent: str,
        ) -> LineOutcome:
            outcome = await lines.run(endpoint, body, request_id, tenant, line, traceparent)
            if len(lines.calls) == 5:
                clock["now"] += 25 * 3600
            return outcome

    await setup.executor(ClosingLines(), clock=lambda: clock["now"]).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "expired" and done.expired_at
    output = await setup.lines_of(done.output_file_id)
    errors = await setup.lines_of(done.error_file_id)
    assert [line["custom_id"] for line in output] == [f"id-{i}" for i in range(5)]
    assert [line["custom_id"] for line in errors] == [f"id-{i}" for i in range(5, 12)]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert done.request_counts.model_dump() == {"total": 12, "completed": 5, "failed": 7}


async def test_a_bad_file_fails_the_batch_with_every_fault(setup: Setup) -> None:
    good = {"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": {"texts": ["x"]}}
    batch = await setup.batch(
        [],
        raw_lines=[
            json.dumps(good),
            json.dumps(good),
            "{oops",
            json.dumps({**good, "custom_id": "c", "url": "/v1/embeddings"}),
        ],
    )
    lines = FakeLines()
    await setup.executor(lines).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "failed" and done.failed_at
    assert done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data] == [
        ("duplicate_custom_id", 2),
        ("invalid_json_line", 3),
        ("mismatched_endpoint", 4),
    ]
    assert lines.calls == [] and [r.batch.status for r in setup.handled.results] == ["failed"]


async def test_the_configured_json_depth_bounds_batch_lines(setup: Setup) -> None:
    nested = {"custom_id": "deep", "method": "POST", "url": ENDPOINT, "body": {"texts": ["x"]}}
    # The body nests 2 levels (object, list): within a limit of 2, beyond a limit of 1.
    within = await setup.batch([], raw_lines=[json.dumps(nested)])
    await setup.executor(FakeLines(), max_json_depth=2).run(within.id)
    assert (await setup.store.get_batch(within.id)).status == "completed"

    beyond = await setup.batch([], raw_lines=[json.dumps(nested)])
    await setup.executor(FakeLines(), max_json_depth=1).run(beyond.id)
    done = await setup.store.get_batch(beyond.id)
    assert done.status == "failed"
    assert [(e.code, e.line) for e in done.errors.data] == [("invalid_json_line", 1)]


async def test_retryable_failures_are_retried_then_reported(setup: Setup) -> None:
    batch = await setup.batch(["flaky", "ok"])
    await setup.executor(FakeLines(flaky_failures=2)).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.request_counts.completed == 2

    second = await setup.batch(["flaky"])
    await setup.executor(FakeLines(flaky_failures=100), retry_window_s=0).run(second.id)
    done = await setup.store.get_batch(second.id)
    assert done is not None and done.request_counts.failed == 1
    (error,) = await setup.lines_of(done.error_file_id)
    assert error["response"]["status_code"] == 503


async def test_the_retry_window_starts_at_the_first_answer_not_the_budget_wait(
    setup: Setup,
) -> None:
    batch = await setup.batch(["flaky"])
    clock = {"now": time.time()}

    class WaitingLines(FakeLines):
        """The line's first answer comes after a wait for its key's budget longer than the
        retry window; the engine is restarting then (past the server-error attempts), and
        answers a retry within the window."""

        async def run(self, *args: Any) -> LineOutcome:
            if not self.calls:
                clock["now"] += 2 * settings().retry_window_s
            return await super().run(*args)

    lines = WaitingLines(flaky_failures=SERVER_ERROR_ATTEMPTS)
    await setup.executor(lines, clock=lambda: clock["now"]).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.request_counts.completed == 1
    assert lines.calls == ["flaky"] * (SERVER_ERROR_ATTEMPTS + 1)


class BrokenLines(FakeLines):
    """ "crash" texts raise, "broken" texts answer 500, every time."""

    async def run(self, endpoint: str, body: dict[str, Any], *args: Any) -> LineOutcome:
        text = body["texts"][0]
        if text == "crash":
            self.calls.append(text)
            raise RuntimeError("a bug this line trips")
        if text == "broken":
            self.calls.append(text)
            return LineOutcome(status_code=500, body={"error": {"message": "broken"}})
        return await super().run(endpoint, body, *args)


async def test_server_errors_are_tried_a_few_times_and_client_errors_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "LINE_BACKOFF", wait_none())
    batch = await setup.batch(["crash", "broken", "bad", "ok"])
    lines = BrokenLines()
    await setup.executor(lines).run(batch.id)
    assert sorted(lines.calls) == sorted(
        ["crash"] * SERVER_ERROR_ATTEMPTS + ["broken"] * SERVER_ERROR_ATTEMPTS + ["bad", "ok"]
    )
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.request_counts.model_dump() == {
        "total": 4,
        "completed": 1,
        "failed": 3,
    }
    errors = {
        line["custom_id"]: line["response"] for line in await setup.lines_of(done.error_file_id)
    }
    assert errors["id-0"]["status_code"] == 500
    assert errors["id-0"]["body"]["error"]["code"] == "internal_error"
    assert errors["id-1"]["status_code"] == 500
    assert errors["id-2"]["status_code"] == 400


async def test_a_batch_held_by_another_runner_is_left_alone(setup: Setup) -> None:
    batch = await setup.batch(["a"])
    assert await setup.store.claim_batch(batch.id, "runner-x", 60)
    lines = FakeLines()
    assert not await setup.executor(lines).run(batch.id)
    assert lines.calls == []


class Progress:
    def __init__(self) -> None:
        self.lines: list[tuple[int, int]] = []
        self.ended: list[str] = []

    def lines_done(self, completed: int, failed: int) -> None:
        self.lines.append((completed, failed))

    def batch_ended(self, status: str) -> None:
        self.ended.append(status)


async def test_progress_is_told_each_checkpoint_and_the_end_once(setup: Setup) -> None:
    texts = [f"t{i}" for i in range(12)]
    texts[6] = "bad"
    batch = await setup.batch(texts)
    progress = Progress()
    executor = BatchExecutor(
        setup.store,
        setup.storage,
        FakeLines(),
        settings(),
        setup.handled,
        "runner-a",
        progress=progress,
    )
    assert await executor.run(batch.id)

    assert progress.lines == [(5, 0), (4, 1), (2, 0)]
    assert progress.ended == ["completed"]
    invalid = await setup.batch([], raw_lines=["not json"])
    assert await executor.run(invalid.id)
    assert progress.ended == ["completed", "failed"]


async def test_lines_run_as_their_tenants_within_the_lines_the_lease_grants(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(20)], tenant="team-a")
    lines = FakeLines(delay_s=0.01)
    executor = setup.executor(lines, chunk_size=20, max_concurrent_lines=8, max_lines_per_tenant=3)
    assert await executor.run(batch.id)
    assert set(lines.tenants) == {"team-a"}
    assert lines.most_in_flight["team-a"] == 3
    # Each line also names itself, as effects such as alerts derive their ids from it.
    assert sorted(lines.batch_lines, key=lambda line: int(line.custom_id.removeprefix("id-"))) == [
        BatchLine(batch_id=batch.id, custom_id=f"id-{i}") for i in range(20)
    ]


async def test_a_batch_that_yields_between_chunks_resumes_where_it_stopped(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(12)], tenant="team-a")
    asked: list[Lease] = []

    async def yield_once(lease: Lease) -> bool:
        asked.append(lease)
        return len(asked) == 1

    assert await setup.executor(FakeLines()).run(batch.id, yield_once)
    paused = await setup.store.get_batch(batch.id)
    assert paused is not None and paused.status == "in_progress"
    assert paused.request_counts.completed == 5 and len(await setup.store.chunks(batch.id)) == 1
    # The lease is given back, so the batch waits for whoever takes it next.
    assert [b.id for b in await setup.store.claimable_batches()] == [batch.id]
    assert asked[0].tenant == "team-a" and asked[0].lines == 64

    resumed = FakeLines()
    assert await setup.executor(resumed, owner="runner-b").run(batch.id, yield_once)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.status == "completed"
    assert resumed.calls == [f"t{i}" for i in range(5, 12)]
    output = await setup.lines_of(done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"id-{i}" for i in range(12)]
    # Asked after each chunk with lines left, never after the last.
    assert len(asked) == 2


async def test_output_files_expire_as_the_batch_asked(setup: Setup) -> None:
    policy = ExpiresAfter(anchor="created_at", seconds=7200)
    batch = await setup.batch(["t0", "bad"], output_expires_after=policy)
    await setup.executor(FakeLines()).run(batch.id)
    done = await setup.store.get_batch(batch.id)
    assert done is not None and done.output_expires_after == policy
    for file_id in (done.output_file_id, done.error_file_id):
        record = await setup.store.get_file(file_id or "")
        assert record is not None
        # OpenAI's anchor: the output file's own creation.
        assert record.file.expires_at == record.file.created_at + 7200

    forever = await setup.batch(["t0"])
    await setup.executor(FakeLines()).run(forever.id)
    done = await setup.store.get_batch(forever.id)
    record = await setup.store.get_file(done.output_file_id or "")
    assert record is not None and record.file.expires_at is None


class LeaseTakenAtFinalize:
    """The store, except that another runner takes the batch over just as it is finalized."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._chunk_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def chunks(self, batch_id: str) -> list[ChunkRecord]:
        self._chunk_reads += 1
        if self._chunk_reads == 2:  # the first read resumes the run, the second finalizes it
            await self._store.release_batch(batch_id, "runner-a")
            assert await self._store.claim_batch(batch_id, "runner-b", 60)
        return await self._store.chunks(batch_id)


async def test_a_runner_that_lost_its_lease_does_not_finalize(setup: Setup) -> None:
    batch = await setup.batch([f"t{i}" for i in range(7)])
    executor = BatchExecutor(
        LeaseTakenAtFinalize(setup.store),  # type: ignore[arg-type]
        setup.storage,
        FakeLines(),
        settings(),
        setup.handled,
        "runner-a",
    )
    assert await executor.run(batch.id)

    stuck = await setup.store.get_batch(batch.id)
    assert stuck is not None and stuck.status == "finalizing"
    assert stuck.output_file_id is None
    outputs, _ = await setup.store.list_files("batch_output", 10, "asc", None)
    assert outputs == [], "no output file recorded by a runner without the lease"
    assert setup.handled.results == []
    # The checkpoints stay for the runner that holds the lease now.
    assert len(setup.storage.chunk_files(batch.id)) == 2


async def test_chunk_files_are_written_off_the_event_loop(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease renewal runs on the same event loop: a slow fsync there would stall it.
    on_the_loop: list[bool] = []

    def recording_write(path: Path, data: bytes) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_the_loop.append(False)
        else:
            on_the_loop.append(True)
        write_durably(path, data)

    monkeypatch.setattr(executor_module, "write_durably", recording_write)
    batch = await setup.batch([f"t{i}" for i in range(7)])
    await setup.executor(FakeLines()).run(batch.id)
    assert on_the_loop == [False, False]
