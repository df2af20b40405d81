"""`capserve` and its Python client against the running app: classify a CSV, resume after a
kill mid-file, wait out a 429-limited key, the Batch API way, and the client's typed calls."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capserve.client import AsyncClient, Client, output_lines
from capserve.tracing import TraceParent
from tests.conftest import BANKING77
from tests.e2e.api_keys import ADMIN_KEY, LIMITED_KEY, LIMITED_REQUESTS

pytestmark = pytest.mark.e2e
RUN_TIMEOUT_S = 300


def banking77(name: str, count: int) -> list[dict[str, str]]:
    with (BANKING77 / name).open(newline="") as handle:
        return list(csv.DictReader(handle))[:count]


def write_input(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "text"])
        writer.writeheader()
        writer.writerows({"id": f"q{n}", "text": row["text"]} for n, row in enumerate(rows, 1))
    return path


def command(base_url: str, key: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "capserve", "--url", base_url, "--api-key", key, *args]


def capserve(
    project_root: Path, base_url: str, key: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(base_url, key, *args),
        cwd=project_root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def records(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_csv_is_classified_with_progress_and_labels_in_input_order(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    rows = banking77("heldout.csv", 300)
    source = write_input(tmp_path / "tickets.csv", rows)
    output = tmp_path / "labels.csv"
    run = capserve(
        project_root, base_url, ADMIN_KEY, "classify", str(source), "-o", str(output),
        "--items-per-request", "64",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "texts/s" in run.stderr and "300/300" in run.stderr
    out = records(output)
    assert [(r["row"], r["id"]) for r in out] == [(str(n), f"q{n}") for n in range(1, 301)]
    right = sum(r["label"] == row["category"] for r, row in zip(out, rows, strict=True))
    assert right / len(rows) >= 0.8
    assert all(0 < float(r["confidence"]) <= 1 and r["error"] == "" for r in out)


def test_a_run_killed_mid_file_resumes_to_every_row_once(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    rows = banking77("train.csv", 3000)
    source = write_input(tmp_path / "tickets.csv", rows)
    output = tmp_path / "labels.jsonl"
    args = ["classify", str(source), "-o", str(output), "--items-per-request", "16"]
    first = subprocess.Popen(
        command(base_url, ADMIN_KEY, *args, "--concurrency", "1"),
        cwd=project_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not output.exists() or output.read_text().count("\n") < 200:
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = output.read_text().count("\n")
    assert 200 <= written < len(rows)

    again = capserve(project_root, base_url, ADMIN_KEY, *args)
    assert again.returncode == 0, again.stderr
    assert f"holds rows 1-{written}: continuing after them" in again.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["row"] for line in lines] == list(range(1, len(rows) + 1))
    assert [line["id"] for line in lines] == [f"q{n}" for n in range(1, len(rows) + 1)]
    assert all(line.get("label") for line in lines)


def test_a_rate_limited_key_waits_out_its_429s_and_finishes(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    rows = banking77("heldout.csv", 5)
    source = write_input(tmp_path / "tickets.csv", rows)
    output = tmp_path / "labels.csv"
    started = time.monotonic()
    run = capserve(
        project_root, base_url, LIMITED_KEY, "classify", str(source), "-o", str(output),
        "--items-per-request", "1", "--no-progress",
    )  # fmt: skip
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    assert [r["row"] for r in records(output)] == ["1", "2", "3", "4", "5"]
    # Six requests (the capabilities, then a text each) on a bucket of at most `burst`: the
    # rest waited for the tokens the key's rate refills.
    waited = (6 - LIMITED_REQUESTS["burst"]) / LIMITED_REQUESTS["per_s"]
    assert took >= waited * 0.8


def test_a_bad_key_is_exit_code_4_with_the_services_message(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    run = capserve(project_root, base_url, "sk-capserve-wrong", "classify", "-")
    assert run.returncode == 4
    assert "the API key is not valid" in run.stderr and "Traceback" not in run.stderr


def test_batch_mode_classifies_through_the_batch_api(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    rows = banking77("heldout.csv", 40)
    source = write_input(tmp_path / "tickets.csv", rows)
    output = tmp_path / "labels.csv"
    run = capserve(
        project_root, base_url, ADMIN_KEY, "classify", str(source), "-o", str(output),
        "--batch", "--items-per-request", "10", "-c", "classification", "-c", "alerts",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = records(output)
    assert [r["id"] for r in out] == [f"q{n}" for n in range(1, 41)]
    assert all(r["label"] and r["alerts"].startswith("[") for r in out)
    assert not (tmp_path / "labels.csv.batch.json").exists()


def test_batch_commands_submit_follow_and_download_a_batch(
    project_root: Path, base_url: str, tmp_path: Path
) -> None:
    lines = [
        {"custom_id": f"q{n}", "method": "POST", "url": "/v1/classify", "body": {"texts": [t]}}
        for n, t in enumerate(["My card has not arrived", "Why was I charged a fee?"])
    ]
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    submit = capserve(project_root, base_url, ADMIN_KEY, "batch", "submit", str(source), "--wait")
    assert submit.returncode == 0, submit.stderr
    batch_id = submit.stdout.strip()
    status = capserve(project_root, base_url, ADMIN_KEY, "batch", "status", batch_id)
    assert json.loads(status.stdout)["status"] == "completed"
    output = tmp_path / "output.jsonl"
    download = capserve(
        project_root, base_url, ADMIN_KEY, "batch", "download", batch_id, "-o", str(output)
    )
    assert download.returncode == 0, download.stderr
    assert sorted(json.loads(line)["custom_id"] for line in output.read_text().splitlines()) == [
        "q0",
        "q1",
    ]
    missing = capserve(project_root, base_url, ADMIN_KEY, "batch", "status", "batch_nope")
    assert missing.returncode == 5 and "no batch with id 'batch_nope'" in missing.stderr


def test_the_client_classifies_and_runs_a_batch_in_the_callers_trace(base_url: str) -> None:
    with Client(base_url, ADMIN_KEY) as client:
        assert client.ready().status == "ready"
        listing = client.capabilities()
        assert listing.limits.max_items_per_request == 256
        assert {"classification", "alerts"} <= set(listing.names)
        answer = client.classify(
            ["I still have not received my new card"], capabilities=["classification", "alerts"]
        )
        [result] = answer.results
        assert result.label == "card_arrival" and 0 < (result.confidence or 0) <= 1
        assert "alerts" in result.outputs

        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"q{n}",
                    "method": "POST",
                    "url": "/v1/classify",
                    "body": {"texts": [text]},
                }
            )
            + "\n"
            for n, text in enumerate(["My card has not arrived", "Why was I charged a fee?"])
        )
        upload = client.upload_file(lines.encode(), "tickets.jsonl")
        trace = TraceParent.new()
        batch = client.create_batch(upload.id, traceparent=trace)
        assert batch.traceparent == str(trace)
        done = client.wait_batch(batch.id, poll_interval_s=0.5)
        assert done.status == "completed" and done.output_file_id
        written = output_lines(client.file_content(done.output_file_id))
    assert sorted(line.custom_id for line in written) == ["q0", "q1"]
    for line in written:
        assert line.response is not None
        span = TraceParent.parse(line.response.traceparent)
        assert span is not None and span.trace_id == trace.trace_id


async def test_the_async_client_classifies_concurrently(base_url: str) -> None:
    async with AsyncClient(base_url, ADMIN_KEY) as client:
        answers = await asyncio.gather(
            *(client.classify([f"how do I top up {n} euros"]) for n in range(8))
        )
    assert all(answer.results[0].label for answer in answers)
