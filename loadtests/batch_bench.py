"""A 50,000-line batch job on the default model, against the raw engine on the same texts.

    .venv/bin/python loadtests/batch_bench.py [--lines 50000]

One run, one machine: the raw vLLM engine embeds every text of the job in one offline call (the
limit), then the default app starts (result cache off, so no line is answered from memory) and
the job goes through the Files and Batch API with the official `openai` SDK: upload, create,
poll, download. Every text is distinct (a ticket number is appended), so neither side gains
from repeats. Writes `loadtests/results/batch.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.processes import free_port
from cluster.serve_flags import ray_env, selected_flags
from deployments.config import ModelConfig
from loadtests.apps import PROJECT_ROOT, default_app, uncached_default_app, use_app_environment
from loadtests.bench import Measurement, raw_engine, read_texts


def job_texts(count: int) -> list[str]:
    corpus = read_texts("heldout.csv") + read_texts("train.csv")
    return [f"{corpus[index % len(corpus)]} (ticket {index})" for index in range(count)]


def job_file(texts: list[str], prefix: str = "line") -> bytes:
    """Batch input lines classifying one text each, custom_ids `<prefix>-<index>`."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{prefix}-{index}",
                "method": "POST",
                "url": "/v1/classify",
                "body": {"texts": [text]},
            }
        ).encode()
        + b"\n"
        for index, text in enumerate(texts)
    )


def submit_job(sdk: Any, texts: list[str]) -> Any:
    """Uploads the job's file and creates its batch with the `openai` SDK; the batch."""
    upload = sdk.files.create(file=("job.jsonl", job_file(texts)), purpose="batch")
    return sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",
    )


def finish_job(sdk: Any, batch: Any, lines: int, started: float) -> dict[str, Any]:
    """Polls `batch` until it ends and downloads its output; what the job did, timed from
    `started` (a `time.perf_counter()`)."""
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(2)
        batch = sdk.batches.retrieve(batch.id)
        print(f"{batch.status} {batch.request_counts}", flush=True)
    wall_s = time.perf_counter() - started
    output = sdk.files.content(batch.output_file_id).content if batch.output_file_id else b""
    custom_ids = [json.loads(line)["custom_id"] for line in output.splitlines()]
    assert batch.in_progress_at and batch.completed_at
    return {
        "status": batch.status,
        "lines": lines,
        "output_lines": len(custom_ids),
        "distinct_custom_ids": len(set(custom_ids)),
        "failed": batch.request_counts.failed,
        "running_s": batch.completed_at - batch.in_progress_at,
        "wall_s": round(wall_s, 1),
    }


def run_job(texts: list[str], cache_dir: str) -> dict[str, Any]:
    import openai

    with uncached_default_app("capserve-batch-bench", cache_dir) as base_url:
        sdk = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
        started = time.perf_counter()
        return finish_job(sdk, submit_job(sdk, texts), len(texts), started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    arguments = parser.parse_args()
    use_app_environment()
    # The job runs under the Serve modes `make run` uses (cluster/serve_flags.py).
    os.environ.update(ray_env(selected_flags(), free_port))
    texts = job_texts(arguments.lines)
    app = default_app(str(Path.home() / ".cache" / "capserve"))
    minilm = ModelConfig.model_validate(app["args"]["models"][0])
    raw: Measurement = raw_engine(minilm, texts, [], "")
    with tempfile.TemporaryDirectory(prefix="capserve-batch-bench-") as scratch:
        job = run_job(texts, scratch)
    raw_rate = raw.texts_per_s
    job_rate = job["lines"] / job["wall_s"]
    results = {
        "command": "python loadtests/batch_bench.py " + f"--lines {arguments.lines}",
        "serve_flags": ",".join(sorted(selected_flags())) or "none",
        "raw_engine_texts_per_s": round(raw_rate, 1),
        "batch_lines_per_s_wall": round(job_rate, 1),
        "batch_lines_per_s_running": round(job["lines"] / max(job["running_s"], 1), 1),
        "ratio_to_raw_engine": round(job_rate / raw_rate, 3),
        **job,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = "\n".join(f"| {key} | {value} |" for key, value in results.items())
    (arguments.out / "batch.md").write_text(f"| measure | value |\n| --- | --- |\n{rows}\n")
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
