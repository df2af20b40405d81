"""`python -m deployments.batch.job`: one batch file through the app, from a shell or with
`ray job submit`, with the Batch API's guarantees.

The job keeps its own state in `--state-dir` (a SQLite job store and the chunk files) and drives
the batch with the Batch API's executor, so a job that was stopped or killed resumes at its last
checkpoint when the same command runs again, and every custom_id is in the output exactly once.
Lines go through the engines (and `placement: deployment` runners) of the running app, got by name,
with inline capabilities loaded in the job itself; when the app is not running, the job deploys it
from the config file and deletes it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from pydantic import BaseModel, ConfigDict, FilePath, ValidationError, field_validator
from ray import serve
from ray.serve.schema import ServeInstanceDetails
from tqdm import tqdm

from batchjobs.executor import BatchExecutor, ExecutionSettings, LineHandler
from batchjobs.files import FileStorage
from batchjobs.handlers import BatchResult
from batchjobs.schemas import (
    BATCH_ENDPOINTS,
    BatchObject,
    BatchStatus,
    Endpoint,
    FileObject,
    FileRecord,
    RequestCounts,
)
from batchjobs.sql_store import open_store
from batchjobs.store import JobStore
from capabilities.errors import validation_problems
from capserve.tracing import TraceParent
from deployments.batch.runner import build_batch_lines
from deployments.config import AppConfig, ConfigError, parse_app_config
from deployments.dag.capability_clients import close_inline, configure_inline
from deployments.dag.runner import runner_name
from deployments.deploy import deploy, wait_running
from deployments.engine.placement import engine_deployment_options
from deployments.ray_compat import serve_controller_client
from deployments.telemetry.stats import STATS_NAME

PROGRESS_INTERVAL_S = 0.5
# Past a crashed run's lease, how long to keep trying before deciding that a live run holds it.
LEASE_GRACE_S = 2.0
INTERRUPTED_EXIT_CODE = 130


class JobError(RuntimeError):
    """The job cannot start or go on; the message says why and what to do."""


class JobArgs(BaseModel):
    model_config = ConfigDict(frozen=True)

    input: FilePath
    output: Path
    errors: Path
    endpoint: Endpoint
    config: Path
    app: str | None
    state_dir: Path

    @field_validator("input", "output", "errors", "config", "state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # The batch id derives from these paths: any spelling of a path must name one job.
        return value.expanduser().resolve()


def parse_args(argv: Sequence[str] | None = None) -> JobArgs:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.batch.job",
        description="Run a batch file through the capserve app; run it again to resume.",
    )
    parser.add_argument("--input", type=Path, required=True, help="JSONL batch lines")
    parser.add_argument("--output", type=Path, required=True, help="JSONL of successful lines")
    parser.add_argument(
        "--errors", type=Path, help="JSONL of failed lines [<output stem>.errors.jsonl]"
    )
    parser.add_argument("--endpoint", choices=BATCH_ENDPOINTS, default="/v1/classify")
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument("--app", help="application of the config [its first]")
    parser.add_argument(
        "--state-dir", type=Path, help="job store, checkpoints [<output stem>.state]"
    )
    parsed = parser.parse_args(argv)
    stem = parsed.output.with_suffix("")
    try:
        return JobArgs(
            input=parsed.input,
            output=parsed.output,
            errors=parsed.errors or Path(f"{stem}.errors.jsonl"),
            endpoint=parsed.endpoint,
            config=parsed.config,
            app=parsed.app,
            state_dir=parsed.state_dir or Path(f"{stem}.state"),
        )
    except ValidationError as error:
        parser.error(validation_problems(error))


def job_batch_id(input_path: Path, output_path: Path) -> str:
    """The same for every run of one command, so a run finds the batch an earlier one left."""
    digest = hashlib.sha256(f"{input_path}\n{output_path}".encode()).hexdigest()[:32]
    return f"batch_{digest}"


class JobSummary(BaseModel):
    """The job's one-line JSON report."""

    batch_id: str
    status: BatchStatus
    total: int
    completed: int
    failed: int
    seconds: float
    lines_per_s: float
    output: str
    errors: str


@dataclass(frozen=True)
class JobResult:
    batch: BatchObject
    summary: JobSummary


async def run_job(args: JobArgs, lines: LineHandler, settings: ExecutionSettings) -> JobResult:
    """Runs (or resumes) the job's batch to its end and writes its output and error files."""
    started = time.monotonic()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(f"sqlite:///{args.state_dir / 'job.db'}")
    try:
        batch = await _job_batch(store, args)
        done_before = _done(batch.request_counts)
        executor = BatchExecutor(
            store,
            FileStorage(args.state_dir),
            lines,
            settings,
            _no_handlers,
            owner=f"job-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        )
        progress = _Progress(done_before)
        following = asyncio.create_task(_follow(store, batch.id, progress))
        try:
            batch = await _run_to_the_end(store, executor, batch.id, settings.lease_s)
            progress.show(batch.request_counts)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            progress.close()
        await _write_outputs(store, batch, args)
    finally:
        await store.close()
    seconds = time.monotonic() - started
    counts = batch.request_counts
    summary = JobSummary(
        batch_id=batch.id,
        status=batch.status,
        total=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        seconds=round(seconds, 2),
        lines_per_s=round((_done(counts) - done_before) / seconds, 1) if seconds else 0.0,
        output=str(args.output),
        errors=str(args.errors),
    )
    return JobResult(batch=batch, summary=summary)


def report(result: JobResult) -> None:
    """The batch's own errors (a file that failed validation) on stderr, the summary on stdout."""
    if result.batch.errors is not None:
        print(f"batch {result.batch.id} failed:", file=sys.stderr)
        for error in result.batch.errors.data:
            where = f"line {error.line}: " if error.line is not None else ""
            print(f"  {where}{error.code}: {error.message}", file=sys.stderr)
    print(result.summary.model_dump_json(), flush=True)


async def _no_handlers(result: BatchResult) -> None:
    """The job's result is its output files, written once the batch has ended."""


def _done(counts: RequestCounts) -> int:
    return counts.completed + counts.failed


async def _job_batch(store: JobStore, args: JobArgs) -> BatchObject:
    """The batch an earlier run of this command made, or a new one."""
    batch_id = job_batch_id(args.input, args.output)
    size = args.input.stat().st_size
    batch = await store.get_batch(batch_id)
    if batch is not None:
        record = await store.get_file(batch.input_file_id)
        if batch.endpoint != args.endpoint or record is None or record.file.bytes != size:
            # Chunks are checkpointed by line number: a changed input cannot be resumed.
            raise JobError(
                f"{args.state_dir} holds this job with another input file or endpoint "
                f"({batch.endpoint}); delete that folder to start the job over"
            )
        return batch
    now = int(time.time())
    file_id = f"file-{batch_id.removeprefix('batch_')}"
    if await store.get_file(file_id) is None:  # else a run stopped between these two writes
        file = FileObject(
            id=file_id, bytes=size, created_at=now, filename=args.input.name, purpose="batch"
        )
        await store.create_file(FileRecord(file=file, path=str(args.input)))
    # No expires_at: a job runs to the end however long it takes and however often it resumes.
    batch = BatchObject(
        id=batch_id,
        endpoint=args.endpoint,
        input_file_id=file_id,
        completion_window="24h",
        status="validating",
        created_at=now,
        traceparent=str(TraceParent.new()),
    )
    await store.create_batch(batch)
    return batch


async def _run_to_the_end(
    store: JobStore, executor: BatchExecutor, batch_id: str, lease_s: float
) -> BatchObject:
    """Runs the batch until it has ended, first waiting out the lease of a run that died."""
    deadline: float | None = None
    while True:
        await executor.run(batch_id)
        batch = await store.get_batch(batch_id)
        assert batch is not None
        if batch.terminal:
            return batch
        now = time.monotonic()
        if deadline is None:
            deadline = now + lease_s + LEASE_GRACE_S
            print(
                f"batch {batch_id} is held by another run of this job; the lease of a run "
                f"that died lasts up to {lease_s:g} s: waiting for it",
                file=sys.stderr,
            )
        elif now > deadline:
            raise JobError(
                f"another run of this job still holds batch {batch_id} (it keeps renewing its "
                "lease): let it finish or stop it, then run this again"
            )
        await asyncio.sleep(min(1.0, lease_s / 4))


class _Progress:
    """A tqdm bar over the stored counts, shown once validation has counted the lines."""

    def __init__(self, done_before: int) -> None:
        self._done_before = done_before
        self._bar: tqdm | None = None

    def show(self, counts: RequestCounts) -> None:
        if self._bar is None:
            if not counts.total:
                return
            # `initial`: lines an earlier run checkpointed do not count towards the rate.
            self._bar = tqdm(total=counts.total, initial=self._done_before, unit="line")
        self._bar.set_postfix(failed=counts.failed, refresh=False)
        self._bar.update(_done(counts) - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def _follow(store: JobStore, batch_id: str, progress: _Progress) -> None:
    while True:
        batch = await store.get_batch(batch_id)
        assert batch is not None
        progress.show(batch.request_counts)
        await asyncio.sleep(PROGRESS_INTERVAL_S)


async def _write_outputs(store: JobStore, batch: BatchObject, args: JobArgs) -> None:
    """Copies the batch's final files to --output and --errors durably; a file the batch does
    not have is written empty, so that no file of an earlier job is left at either path."""
    for file_id, destination in (
        (batch.output_file_id, args.output),
        (batch.error_file_id, args.errors),
    ):
        record = await store.get_file(file_id) if file_id else None
        parts = [Path(record.path)] if record is not None else []
        await asyncio.to_thread(FileStorage.assemble, parts, destination)


def _load_app(path: Path, name: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Serve config file and the application of it that the job uses."""
    deploy_config = yaml.safe_load(path.read_text())
    applications = deploy_config.get("applications") or []
    for app in applications:
        if name is None or app["name"] == name:
            return deploy_config, app
    names = [app["name"] for app in applications]
    raise JobError(f"{path} has no application {name!r}; it has {names}")


def _use_or_deploy(deploy_config: dict[str, Any], app: dict[str, Any], source: Path) -> bool:
    """Uses the app where it is there; else starts deploying it and says so (True)."""
    name = app["name"]
    status = serve.status().applications.get(name)
    if status is None:
        print(f"app {name!r} is not running: deploying it from {source}", file=sys.stderr)
        serve.start(
            proxy_location=deploy_config.get("proxy_location"),
            http_options=deploy_config.get("http_options"),
        )
        # A deploy replaces every app deployed from a config: those running stay in it.
        others = _apps_deployed_from_config(excluding=name)
        deploy({**deploy_config, "applications": [*others, app]})
        return True
    if status.status not in ("RUNNING", "DEPLOYING"):
        raise JobError(f"app {name!r} is {status.status}: {status.message}")
    print(f"using the running app {name!r}", file=sys.stderr)
    return False


def _apps_deployed_from_config(excluding: str) -> list[dict[str, Any]]:
    details = ServeInstanceDetails(**serve_controller_client().get_serve_details())
    return [
        app.deployed_app_config.model_dump(exclude_unset=True)
        for app in details.applications.values()
        if app.deployed_app_config is not None and app.name != excluding
    ]


async def _run_on_app(args: JobArgs, config: AppConfig, app_name: str) -> JobResult:
    engines = {
        model.name: serve.get_deployment_handle(
            engine_deployment_options(model)["name"], app_name=app_name
        )
        for model in config.models
    }
    runners = {
        capability.name: serve.get_deployment_handle(
            runner_name(capability.name), app_name=app_name
        )
        for capability in config.deployed_capabilities
    }
    stats = serve.get_deployment_handle(STATS_NAME, app_name=app_name)
    lines, inline = build_batch_lines(
        config, engines, runners, stats, batching=None, rate_limiter=None
    )
    # Inline capabilities run in this driver, on the settings of the config file.
    await configure_inline(inline, {}, "the batch job")
    try:
        return await run_job(args, lines, config.batch)
    finally:
        await close_inline(inline)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # `ray job stop` sends SIGTERM: stop as on Ctrl-C, which releases the batch's lease (a
    # re-run need not wait it out) and deletes an app this job deployed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        deploy_config, app = _load_app(args.config, args.app)
        # Inline capabilities run in this driver: it gets the variables the app's replicas get
        # from its runtime_env (e.g. a webhook sink's secret_env), where the shell set none.
        for name, value in app.get("runtime_env", {}).get("env_vars", {}).items():
            os.environ.setdefault(name, str(value))
        config = parse_app_config(app["args"])
        # RAY_ADDRESS (set by `ray job submit`) or the cluster of the last `ray start`, else a
        # new local Ray. (`address="auto"` would also join any other Ray found on this host.)
        # Replica logs stay in Ray's log folder, out of the progress bar's way.
        ray.init(log_to_driver=False)
        deployed = _use_or_deploy(deploy_config, app, args.config)
        try:
            wait_running({"applications": [app]})
            result = asyncio.run(_run_on_app(args, config, app["name"]))
        finally:
            if deployed:
                serve.delete(app["name"])
                print(f"deleted app {app['name']!r}, which this job deployed", file=sys.stderr)
    except (JobError, ConfigError) as error:
        print(f"batch job: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("batch job: stopped; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    report(result)
    return 0 if result.batch.status == "completed" else 1


if __name__ == "__main__":  # vLLM's engine processes import this module again when spawned
    sys.exit(main())
