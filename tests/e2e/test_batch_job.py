"""`python -m deployments.batch.job` as its own process against the running test cluster: it uses
the running app, writes every custom_id once, and a second run only writes the files again."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtests.batch_bench import job_file
from tests.e2e.conftest import ServeCluster
from tests.e2e.test_batch_http import heldout_texts, jsonl

pytestmark = pytest.mark.e2e
LINES = 200
JOB_TIMEOUT_S = 300


def run_job(project_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run(
        [sys.executable, "-m", "deployments.batch.job", *args],
        check=False,
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


def job_summary(job: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The summary line of the job's stdout; Ray may print the cluster's warnings there too."""
    (line,) = [line for line in job.stdout.splitlines() if line.startswith('{"batch_id"')]
    return json.loads(line)


def config_file(serve_cluster: ServeCluster, folder: Path) -> Path:
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(serve_cluster.config))
    return path


def test_classify_lines_run_on_the_running_app(
    serve_cluster: ServeCluster, project_root: Path, tmp_path: Path
) -> None:
    from ray import serve

    source = tmp_path / "in.jsonl"
    source.write_bytes(job_file(heldout_texts(LINES), "q"))
    output = tmp_path / "out.jsonl"
    config = config_file(serve_cluster, tmp_path)
    args = ("--input", str(source), "--output", str(output), "--config", str(config))

    job = run_job(project_root, *args)
    assert job.returncode == 0, job.stderr
    assert "using the running app 'capserve'" in job.stderr
    summary = job_summary(job)
    assert summary["status"] == "completed", job.stderr
    assert summary["completed"] == LINES, job.stderr[-4000:]
    lines = jsonl(output.read_bytes())
    assert sorted(line["custom_id"] for line in lines) == sorted(f"q-{i}" for i in range(LINES))
    assert all(line["response"]["body"]["results"][0]["label"] for line in lines)
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    assert (tmp_path / "out.state" / "job.db").is_file()

    # The same command again: the batch has ended, so it only writes the files again.
    output.unlink()
    again = run_job(project_root, *args)
    assert again.returncode == 0, again.stderr
    assert job_summary(again)["lines_per_s"] == 0
    assert jsonl(output.read_bytes()) == lines
    # The job never touches the apps it did not deploy.
    assert {name: app.status for name, app in serve.status().applications.items()} == {
        "capserve": "RUNNING",
        "generative": "RUNNING",
    }


def test_embeddings_lines_with_every_path_given(
    serve_cluster: ServeCluster, project_root: Path, tmp_path: Path
) -> None:
    texts = heldout_texts(20)
    source = tmp_path / "embed.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"e-{index}",
                    "method": "POST",
                    "url": "/v1/embeddings",
                    "body": {"model": "minilm", "input": text, "encoding_format": "float"},
                }
            )
            + "\n"
            for index, text in enumerate(texts)
        )
    )
    output, errors, state = tmp_path / "vectors.jsonl", tmp_path / "failed.jsonl", tmp_path / "s"
    job = run_job(
        project_root,
        *("--input", str(source), "--output", str(output), "--errors", str(errors)),
        *("--endpoint", "/v1/embeddings", "--state-dir", str(state), "--app", "capserve"),
        *("--config", str(config_file(serve_cluster, tmp_path))),
    )
    assert job.returncode == 0, job.stderr
    lines = jsonl(output.read_bytes())
    assert [line["custom_id"] for line in lines] == [f"e-{i}" for i in range(len(texts))]
    vector = lines[0]["response"]["body"]["data"][0]["embedding"]
    assert len(vector) == 384
    assert errors.read_text() == "" and (state / "job.db").is_file()
