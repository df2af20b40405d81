"""The Files and Batch API through the official `openai` SDK, unmodified, against the running app;
and a batch runner killed with SIGKILL mid-job, resuming with every custom_id exactly once."""

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from capabilities.webhooks import verify
from loadtests.batch_bench import job_file
from tests.e2e.api_keys import ADMIN_KEY
from tests.e2e.conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.e2e
TERMINAL = {"completed", "failed", "expired", "cancelled"}
HELDOUT = Path(__file__).resolve().parents[2] / "data" / "banking77" / "heldout.csv"


@pytest.fixture(scope="module")
def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_KEY, max_retries=0)


def heldout_texts(count: int) -> list[str]:
    import csv

    with HELDOUT.open() as source:
        rows = [row["text"] for row in csv.DictReader(source)]
    return [rows[index % len(rows)] for index in range(count)]


def wait_until(sdk: openai.OpenAI, batch_id: str, done: Any, timeout_s: float = 300) -> Any:
    """Polls like a client would, riding out the app being down (after a kill -9)."""
    deadline = time.monotonic() + timeout_s
    batch = None
    while time.monotonic() < deadline:
        try:
            batch = sdk.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.InternalServerError, openai.NotFoundError):
            batch = None
        if batch is not None and done(batch):
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} did not get there in {timeout_s} s: {batch}")


def jsonl(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def test_upload_run_download_with_the_openai_sdk(sdk: openai.OpenAI, webhook_receiver) -> None:
    texts = ["I still have not received my new card", "Why was I charged a fee?"] * 5
    upload = sdk.files.create(file=job_file(texts, "q"), purpose="batch")
    assert upload.object == "file" and upload.purpose == "batch" and upload.filename == "upload"
    assert upload.status == "processed" and upload.bytes == len(job_file(texts, "q"))
    assert sdk.files.retrieve(upload.id).id == upload.id
    assert sdk.files.content(upload.id).content == job_file(texts, "q")
    assert upload.id in [f.id for f in sdk.files.list(purpose="batch")]

    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"team": "support"},
    )
    assert batch.status == "validating" and batch.metadata == {"team": "support"}
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "completed", done
    assert done.request_counts.total == 10 and done.request_counts.completed == 10
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert done.model == "minilm" and done.error_file_id is None

    output = jsonl(sdk.files.content(done.output_file_id).content)
    assert sorted(line["custom_id"] for line in output) == sorted(f"q-{i}" for i in range(10))
    first = next(line for line in output if line["custom_id"] == "q-0")
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["results"][0]["label"] == "card_arrival"
    output_file = sdk.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"

    # The signed batch.completed event reached the configured webhook.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = [
            (json.loads(r.body), r)
            for r in webhook_receiver.requests
            if json.loads(r.body).get("data", {}).get("id") == batch.id
        ]
        if events:
            break
        time.sleep(0.2)
    event, request = events[0]
    assert event["type"] == "batch.completed" and event["id"].startswith("evt_")
    assert verify(WEBHOOK_SECRET, request.headers["x-capserve-signature"], request.body)

    deleted = sdk.files.delete(upload.id)
    assert deleted.deleted and deleted.id == upload.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(upload.id)


def test_per_line_failures_go_to_the_error_file(sdk: openai.OpenAI) -> None:
    lines = (
        job_file(["Where is my card?"], "q")
        + json.dumps(
            {"custom_id": "bad", "method": "POST", "url": "/v1/classify", "body": {"texts": []}}
        ).encode()
        + b"\n"
    )
    upload = sdk.files.create(file=("lines.jsonl", lines), purpose="batch")
    assert upload.filename == "lines.jsonl"
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",  # type: ignore[arg-type]
    )
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "completed"
    assert done.request_counts.completed == 1 and done.request_counts.failed == 1
    (error,) = jsonl(sdk.files.content(done.error_file_id).content)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 422
    assert "texts" in error["response"]["body"]["error"]["message"]


def test_a_malformed_file_fails_the_batch_naming_each_line(sdk: openai.OpenAI) -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/classify", "body": {"texts": ["x"]}}
    content = "\n".join(
        [
            json.dumps(good),
            json.dumps(good),
            json.dumps({**good, "custom_id": "b", "method": "GET"}),
        ]
    ).encode()
    upload = sdk.files.create(file=content, purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",  # type: ignore[arg-type]
    )
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None
    assert [(e.code, e.line) for e in done.errors.data] == [
        ("duplicate_custom_id", 2),
        ("invalid_method", 3),
    ]


def test_cancel_ends_with_partial_output_and_is_idempotent(sdk: openai.OpenAI) -> None:
    upload = sdk.files.create(file=job_file(heldout_texts(3000), "c"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",  # type: ignore[arg-type]
    )
    wait_until(sdk, batch.id, lambda b: b.request_counts.completed >= 100)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "cancelled" and done.cancelled_at
    again = sdk.batches.cancel(batch.id)
    assert again.status == "cancelled"
    output = jsonl(sdk.files.content(done.output_file_id).content)
    custom_ids = [line["custom_id"] for line in output]
    assert 100 <= len(custom_ids) < 3000 and len(set(custom_ids)) == len(custom_ids)
    assert done.request_counts.completed == len(custom_ids)


def test_listing_pages_newest_first(sdk: openai.OpenAI) -> None:
    upload = sdk.files.create(file=job_file(["hello"], "q"), purpose="batch")
    created = [
        sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/classify",
            completion_window="24h",  # type: ignore[arg-type]
        ).id
        for _ in range(3)
    ]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    every = [batch.id for batch in sdk.batches.list(limit=2)]  # the SDK follows `after`
    assert every[:3] == created[::-1] and len(every) == len(set(every))
    for batch_id in created:
        wait_until(sdk, batch_id, lambda b: b.status in TERMINAL)


def test_bad_requests_get_clear_non_retryable_errors(sdk: openai.OpenAI, client) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.batches.retrieve("batch_nope")
    assert missing.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(
            input_file_id="file-nope",
            endpoint="/v1/classify",
            completion_window="24h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.UnprocessableEntityError) as window:
        sdk.batches.create(
            input_file_id="file-x",
            endpoint="/v1/classify",
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert "completion_window" in window.value.body["message"]
    too_much = {f"k{i}": "v" for i in range(17)}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.batches.create(
            input_file_id="file-x",
            endpoint="/v1/classify",  # type: ignore[arg-type]
            completion_window="24h",
            metadata=too_much,
        )
    assert client.post("/v1/files", json={"purpose": "batch"}).status_code == 415
    no_purpose = client.post("/v1/files", files={"file": ("a.jsonl", b"{}")})
    assert no_purpose.status_code == 422 and "purpose" in no_purpose.json()["error"]["message"]
    assert client.get("/v1/batches", params={"limit": 0}).status_code == 422
    assert client.get("/v1/files/file-nope/content").status_code == 404


def _replica_pids(deployment: str) -> list[int]:
    """Process ids of the default app's replicas whose name contains `deployment`."""
    import ray

    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"capserve#{deployment}" in actor["name"]
    ]
    actors = [ray.get_actor(name, namespace="serve") for name in names]
    return ray.get([actor.__ray_call__.remote(lambda _: os.getpid()) for actor in actors])


def _batch_runner_pid() -> int:
    (pid,) = _replica_pids("batch-runner")
    return pid


def test_a_runner_killed_mid_job_resumes_without_loss_or_duplicates(sdk: openai.OpenAI) -> None:
    total = 2500
    upload = sdk.files.create(file=job_file(heldout_texts(total), "k"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",  # type: ignore[arg-type]
    )
    wait_until(sdk, batch.id, lambda b: b.request_counts.completed >= 300)
    pid = _batch_runner_pid()
    os.kill(pid, signal.SIGKILL)
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL, timeout_s=400)
    assert done.status == "completed", done
    assert _batch_runner_pid() != pid
    output = jsonl(sdk.files.content(done.output_file_id).content)
    custom_ids = [line["custom_id"] for line in output]
    assert len(custom_ids) == total and set(custom_ids) == {f"k-{i}" for i in range(total)}
    assert done.request_counts.completed == total and done.error_file_id is None


def test_parasail_openai_batch_runs_a_chat_job(base_url: str, tmp_path: Path, monkeypatch) -> None:
    import openai_batch.run

    lines = [
        {
            "custom_id": f"chat-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": f"Count to {index}"}],
                "max_tokens": 4,
            },
        }
        for index in range(5)
    ]
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    # The client polls once a minute; only its sleep is shortened, nothing it sends.
    real_sleep = time.sleep
    monkeypatch.setattr(
        openai_batch.run, "time", type("Clock", (), {"sleep": lambda s: real_sleep(min(s, 0.5))})
    )
    batch_id = openai_batch.run.main(
        [
            str(source),
            "--base-url",
            f"{base_url}/generative/v1",
            "--api-key",
            "unused",
            "-o",
            str(output),
            "-e",
            str(errors),
        ]
    )
    assert batch_id.startswith("batch_")
    answers = jsonl(output.read_bytes())
    assert sorted(a["custom_id"] for a in answers) == [f"chat-{i}" for i in range(5)]
    body = answers[0]["response"]["body"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 4
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert not errors.exists()


def test_an_embeddings_batch_answers_in_openai_shape(sdk: openai.OpenAI) -> None:
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"e-{index}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "minilm", "input": text},
            }
        )
        + "\n"
        for index, text in enumerate(["card arrival", "exchange rate"])
    )
    upload = sdk.files.create(file=lines.encode(), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
    )
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "completed" and done.model == "minilm"
    assert done.usage is not None and done.usage.input_tokens > 0
    answers = jsonl(sdk.files.content(done.output_file_id).content)
    body = answers[0]["response"]["body"]
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 384


def test_the_whole_app_killed_mid_job_resumes_without_loss_or_duplicates(
    sdk: openai.OpenAI,
) -> None:
    total = 1500
    upload = sdk.files.create(file=job_file(heldout_texts(total), "w"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",
        completion_window="24h",
    )
    wait_until(sdk, batch.id, lambda b: b.request_counts.completed >= 200)
    # Every replica of the app at once: the ingress (and its inline capabilities), the engine,
    # stats and the batch runner.
    pids = _replica_pids("")
    assert len(pids) >= 4
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL, timeout_s=500)
    assert done.status == "completed", done
    output = jsonl(sdk.files.content(done.output_file_id).content)
    custom_ids = [line["custom_id"] for line in output]
    assert len(custom_ids) == total and set(custom_ids) == {f"w-{i}" for i in range(total)}
    assert all(line["response"]["status_code"] == 200 for line in output)
