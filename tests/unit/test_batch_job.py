"""The batch job's arguments and its Ray-free core (job store, executor, progress, output files)
with a fake line handler: runs, resumes after an interruption, waits out a dead run's lease."""

import asyncio
import json
import time
from pathlib import Path

import pytest

from batchjobs.executor import ExecutionSettings
from batchjobs.sql_store import open_store
from deployments.batch.job import JobArgs, JobError, job_batch_id, parse_args, report, run_job
from tests.unit.test_batch_executor import ENDPOINT, FakeLines

SETTINGS = ExecutionSettings(chunk_size=5, progress_interval_s=0.02, lease_s=5, retry_window_s=5)


def write_input(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"id-{i}", "method": "POST", "url": ENDPOINT, "body": {"texts": [t]}}
            )
            + "\n"
            for i, t in enumerate(texts)
        )
    )
    return path


def job_args(tmp_path: Path, texts: list[str]) -> JobArgs:
    source = write_input(tmp_path / "in.jsonl", texts)
    return parse_args(["--input", str(source), "--output", str(tmp_path / "out.jsonl")])


def custom_ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


def test_defaults_sit_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text("")
    args = parse_args(["--input", "in.jsonl", "--output", "results/out.jsonl"])
    assert args.input == tmp_path / "in.jsonl"
    assert args.output == tmp_path / "results" / "out.jsonl"
    assert args.errors == tmp_path / "results" / "out.errors.jsonl"
    assert args.state_dir == tmp_path / "results" / "out.state"
    assert args.endpoint == "/v1/classify" and args.app is None
    assert args.config == tmp_path / "serve_config.yaml"


def test_every_option_can_be_given(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("")
    args = parse_args(
        [
            *("--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")),
            *("--errors", str(tmp_path / "e.jsonl"), "--endpoint", "/v1/embeddings"),
            *("--config", str(tmp_path / "c.yaml"), "--app", "generative"),
            *("--state-dir", str(tmp_path / "state")),
        ]
    )
    assert args.errors == tmp_path / "e.jsonl" and args.endpoint == "/v1/embeddings"
    assert args.config == tmp_path / "c.yaml" and args.app == "generative"
    assert args.state_dir == tmp_path / "state"


@pytest.mark.parametrize(
    "argv",
    [
        ["--input", "in.jsonl", "--output", "o.jsonl", "--endpoint", "/v1/completions"],
        ["--input", "missing.jsonl", "--output", "o.jsonl"],
        ["--output", "o.jsonl"],
    ],
)
def test_bad_arguments_exit_with_usage(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text("")
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2


def test_the_batch_id_depends_only_on_the_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "in.jsonl").write_text("")
    relative = parse_args(["--input", "in.jsonl", "--output", "out.jsonl"])
    spelt_otherwise = parse_args(["--input", "sub/../in.jsonl", "--output", "./out.jsonl"])
    assert job_batch_id(relative.input, relative.output) == job_batch_id(
        spelt_otherwise.input, spelt_otherwise.output
    )
    other = job_batch_id(relative.input, tmp_path / "other.jsonl")
    assert other != job_batch_id(relative.input, relative.output)
    assert other.startswith("batch_")


async def test_a_job_runs_to_the_end_and_writes_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"t{i}" for i in range(12)]
    texts[3] = "bad"
    args = job_args(tmp_path, texts)
    result = await run_job(args, FakeLines(), SETTINGS)

    assert custom_ids(args.output) == [f"id-{i}" for i in range(12) if i != 3]
    assert custom_ids(args.errors) == ["id-3"]
    assert (args.state_dir / "job.db").is_file()
    summary = result.summary
    assert (summary.status, summary.total, summary.completed, summary.failed) == (
        "completed",
        12,
        11,
        1,
    )
    assert summary.batch_id == job_batch_id(args.input, args.output)
    assert summary.lines_per_s > 0 and summary.output == str(args.output)
    report(result)
    assert json.loads(capsys.readouterr().out) == summary.model_dump(mode="json")


async def stop_midway(args: JobArgs, lines: FakeLines, chunks: int) -> None:
    """Runs the job until its batch is in progress with `chunks` checkpoints, then stops it as
    Ctrl-C does."""
    batch_id = job_batch_id(args.input, args.output)
    run = asyncio.create_task(run_job(args, lines, SETTINGS))
    while not (args.state_dir / "job.db").exists():
        await asyncio.sleep(0.02)
    observer = await open_store(f"sqlite:///{args.state_dir / 'job.db'}")
    try:
        while (
            (batch := await observer.get_batch(batch_id)) is None
            or batch.status != "in_progress"
            or len(await observer.chunks(batch_id)) < chunks
        ):
            await asyncio.sleep(0.02)
    finally:
        await observer.close()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def hold_lease(args: JobArgs, owner: str, lease_s: float) -> None:
    """What a run killed with SIGKILL leaves: its lease on the batch."""
    store = await open_store(f"sqlite:///{args.state_dir / 'job.db'}")
    try:
        batch_id = job_batch_id(args.input, args.output)
        assert await store.claim_batch(batch_id, owner, lease_s)
    finally:
        await store.close()


async def test_an_interrupted_job_resumes_with_every_custom_id_once(tmp_path: Path) -> None:
    args = job_args(tmp_path, [f"t{i}" for i in range(30)])
    await stop_midway(args, FakeLines(hang_after=12), chunks=2)
    assert not args.output.exists()

    resumed = FakeLines()
    result = await run_job(args, resumed, SETTINGS)
    assert result.summary.status == "completed" and result.summary.completed == 30
    assert custom_ids(args.output) == [f"id-{i}" for i in range(30)]
    assert len(resumed.calls) == 20  # the two checkpointed chunks did not run again
    assert args.errors.read_text() == ""


async def test_a_finished_job_run_again_only_writes_its_files(tmp_path: Path) -> None:
    args = job_args(tmp_path, ["a", "b"])
    await run_job(args, FakeLines(), SETTINGS)
    args.output.unlink()
    again = FakeLines()
    result = await run_job(args, again, SETTINGS)
    assert again.calls == [] and result.summary.status == "completed"
    assert result.summary.lines_per_s == 0
    assert custom_ids(args.output) == ["id-0", "id-1"]


async def test_a_dead_runs_lease_is_waited_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = job_args(tmp_path, ["a", "b", "c"])
    await stop_midway(args, FakeLines(hang_after=0), chunks=0)
    await hold_lease(args, "job-dead", lease_s=1.0)

    started = time.monotonic()
    result = await run_job(args, FakeLines(), SETTINGS.model_copy(update={"lease_s": 1.0}))
    assert result.summary.status == "completed" and time.monotonic() - started >= 0.5
    assert custom_ids(args.output) == ["id-0", "id-1", "id-2"]
    assert "held by another run of this job" in capsys.readouterr().err


async def test_a_live_run_holding_the_batch_stops_the_job(tmp_path: Path) -> None:
    args = job_args(tmp_path, ["a"])
    await stop_midway(args, FakeLines(hang_after=0), chunks=0)
    await hold_lease(args, "job-alive", lease_s=60)
    lines = FakeLines()
    with pytest.raises(JobError, match="still holds"):
        await run_job(args, lines, SETTINGS.model_copy(update={"lease_s": 0.2}))
    assert lines.calls == []


async def test_a_changed_input_is_not_resumed(tmp_path: Path) -> None:
    args = job_args(tmp_path, ["a", "b", "c"])
    await stop_midway(args, FakeLines(hang_after=0), chunks=0)
    write_input(args.input, ["a", "b", "c", "d"])
    with pytest.raises(JobError, match="delete that folder"):
        await run_job(args, FakeLines(), SETTINGS)


async def test_a_file_that_fails_validation_reports_every_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = job_args(tmp_path, ["a"])
    args.input.write_text(args.input.read_text() * 2 + "{oops\n")
    result = await run_job(args, FakeLines(), SETTINGS)
    assert result.summary.status == "failed"
    assert args.output.read_text() == "" and args.errors.read_text() == ""
    report(result)
    printed = capsys.readouterr()
    assert "line 2: duplicate_custom_id" in printed.err
    assert "line 3: invalid_json_line" in printed.err
    assert json.loads(printed.out)["status"] == "failed"
