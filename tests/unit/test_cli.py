"""The `capserve` command against a mock service: classify a file, resume it, exit codes that
say what went wrong, `--batch` through the Batch API, and the serve and keys commands."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from capserve import cli
from capserve import client as client_module
from capserve.keys import key_hash
from capserve.tracing import TraceParent
from deployments.http.auth import ApiKey, Authenticator

BAD = "bad text"


class Service:
    """`/v1/capabilities`, `/v1/classify` (labels a text with its upper case, refuses BAD) and a
    Batch API whose batches complete at once, except lines holding BAD (a 422 line)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.texts: list[list[str]] = []
        self.uploads: list[bytes] = []
        self.batches: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.status != 200:
            error = {"message": "the API key is not valid", "code": "invalid_api_key"}
            return httpx.Response(self.status, json={"error": error})
        path = request.url.path
        if path == "/v1/capabilities":
            cards = [
                {"id": name, "depends_on": [], "default": name == "classification"}
                | {"settings_version": "v", "settings": {}}
                for name in ("classification", "alerts")
            ]
            limits = {"max_items_per_request": 3, "max_text_chars": 2000, "max_body_bytes": 10**6}
            return httpx.Response(200, json={"data": cards, "levels": [], "limits": limits})
        if path == "/v1/classify":
            return self.classify(json.loads(request.content))
        if path == "/v1/files" and request.method == "POST":
            self.uploads.append(request.content)
            file = {
                "id": "file-in",
                "bytes": 1,
                "created_at": 1,
                "filename": "in",
                "purpose": "batch",
            }
            return httpx.Response(200, json=file)
        if path == "/v1/batches":
            return httpx.Response(200, json=self.run_batch(request))
        if path.endswith("/cancel"):
            batch = self.batches[path.split("/")[3]]
            batch.update(status="cancelling", output_file_id=None)
            return httpx.Response(200, json=batch)
        if path.startswith("/v1/batches/"):
            if path.rsplit("/", 1)[1] not in self.batches:
                error = {"message": "no batch with id 'batch_x'", "code": "not_found"}
                return httpx.Response(404, json={"error": error})
            return httpx.Response(200, json=self.batches[path.rsplit("/", 1)[1]])
        if path == "/v1/files/file-out/content":
            return httpx.Response(200, content=self.output)
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def classify(self, body: dict[str, Any]) -> httpx.Response:
        texts = body["texts"]
        self.texts.append(texts)
        if BAD in texts:
            error = {"message": f"texts.{texts.index(BAD)} is bad", "code": "validation_error"}
            return httpx.Response(422, json={"error": error})
        results = [
            {"index": i, "label": text.upper(), "confidence": 1.0} for i, text in enumerate(texts)
        ]
        return httpx.Response(200, json={"id": "r", "results": results})

    def run_batch(self, request: httpx.Request) -> dict[str, Any]:
        [upload] = self.uploads
        # The file's lines inside the multipart body.
        lines = [json.loads(line) for line in upload.splitlines() if line.startswith(b"{")]
        output = []
        for line in lines:
            answer = self.classify(line["body"])
            body = json.loads(answer.content)
            response = {"status_code": answer.status_code, "request_id": "r", "body": body}
            output.append(
                {"id": "x", "custom_id": line["custom_id"], "response": response, "error": None}
            )
        self.output = "".join(json.dumps(line) + "\n" for line in output).encode()
        batch = {
            "id": "batch_1",
            "endpoint": "/v1/classify",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": "completed",
            "created_at": 1,
            "output_file_id": "file-out",
            "traceparent": request.headers["traceparent"],
        }
        self.batches["batch_1"] = batch
        return batch


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Service:
    service = Service()

    class MockedAsyncClient(client_module.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, transport=httpx.MockTransport(service))

    class MockedClient(client_module.Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs, transport=httpx.MockTransport(service))

    monkeypatch.setattr(cli, "AsyncClient", MockedAsyncClient)
    monkeypatch.setattr(cli, "Client", MockedClient)

    async def no_wait(seconds: float) -> None:
        pass

    monkeypatch.setattr(client_module.asyncio, "sleep", no_wait)
    return service


def run(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli.app, ["--api-key", "sk-test", *args], input=stdin)


def write_csv(path: Path, texts: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([[f"t{n}", text] for n, text in enumerate(texts, 1)])
    return path


def records(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_csv_is_classified_row_for_row_in_requests_at_the_services_limit(service, tmp_path):
    source = write_csv(tmp_path / "in.csv", [f"text {n}" for n in range(1, 8)])
    result = run("classify", str(source), "-o", str(tmp_path / "out.csv"), "--no-progress")
    assert result.exit_code == 0, result.output
    out = records(tmp_path / "out.csv")
    assert [(r["row"], r["id"], r["label"]) for r in out] == [
        (str(n), f"t{n}", f"TEXT {n}") for n in range(1, 8)
    ]
    assert [len(texts) for texts in service.texts] == [3, 3, 1]


def test_a_run_again_with_the_same_output_continues_where_it_stopped(service, tmp_path):
    source = write_csv(tmp_path / "in.csv", [f"text {n}" for n in range(1, 8)])
    output = tmp_path / "out.jsonl"
    assert run("classify", str(source), "-o", str(output), "--no-progress").exit_code == 0
    complete = output.read_text()
    # As a kill leaves it: four whole records and a fifth half written.
    lines = complete.splitlines(keepends=True)
    output.write_text("".join(lines[:4]) + lines[4][:10])
    service.texts.clear()
    result = run("classify", str(source), "-o", str(output), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "holds rows 1-4: continuing after them" in result.output
    assert output.read_text() == complete
    assert service.texts == [["text 5", "text 6", "text 7"]]
    done = run("classify", str(source), "-o", str(output), "--no-progress")
    assert done.exit_code == 0 and "already answers all 7 rows" in done.output
    assert output.read_text() == complete and len(service.texts) == 1


def test_refused_rows_get_their_error_and_exit_1(service, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["a", BAD, "c", "d"])
    result = run("classify", str(source), "-o", str(tmp_path / "out.csv"), "--no-progress")
    assert result.exit_code == cli.ExitCode.ROWS_REFUSED == 1
    out = records(tmp_path / "out.csv")
    assert [r["label"] for r in out] == ["A", "", "C", "D"]
    assert out[1]["error"] == "validation_error: texts.0 is bad"


def test_stdin_lines_are_classified_to_json_lines_on_stdout(service):
    result = run("classify", "-", "--no-progress", stdin="one\n\ntwo\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["row"], line["label"]) for line in lines] == [(1, "ONE"), (2, "TWO")]


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, cli.ExitCode.AUTH), (403, cli.ExitCode.AUTH), (500, cli.ExitCode.UNAVAILABLE)],
)
def test_a_service_that_refuses_the_caller_is_an_exit_code_and_one_line(service, status, code):
    service.status = status
    result = run("classify", "-", stdin="one\n")
    assert result.exit_code == code
    assert "the API key is not valid" in result.output and "Traceback" not in result.output


def test_an_unknown_capability_is_a_usage_error_naming_those_served(service):
    result = run("classify", "-", "-c", "sentiment", stdin="one\n")
    assert result.exit_code == cli.ExitCode.USAGE
    assert "['sentiment']" in result.output and "classification" in result.output


def test_batch_mode_sends_the_rows_as_one_batch_and_refused_lines_online(service, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["a", "b", "c", "d", BAD, "f", "g"])
    output = tmp_path / "out.csv"
    result = run("classify", str(source), "-o", str(output), "--batch", "--no-progress")
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in service.uploads[0].splitlines() if line[:1] == b"{"]
    assert [line["custom_id"] for line in lines] == ["rows-1-3", "rows-4-6", "rows-7-7"]
    assert [r["label"] for r in records(output)] == ["A", "B", "C", "D", "", "F", "G"]
    # The refused line's rows went online, split until the bad one stood alone.
    assert service.texts[3:] == [["d", BAD, "f"], ["d"], [BAD, "f"], [BAD], ["f"]]
    assert not (tmp_path / "out.csv.batch.json").exists()
    assert TraceParent.parse(service.batches["batch_1"]["traceparent"]) is not None


def test_batch_mode_picks_up_the_batch_a_stopped_run_submitted(service, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["a", "b"])
    output = tmp_path / "out.csv"
    assert run("classify", str(source), "-o", str(output), "--batch").exit_code == 0
    output.unlink()
    (tmp_path / "out.csv.batch.json").write_text(
        json.dumps({"batch_id": "batch_1", "first_row": 1, "last_row": 2})
    )
    assert run("classify", str(source), "-o", str(output), "--batch").exit_code == 0
    assert len(service.uploads) == 1 and [r["label"] for r in records(output)] == ["A", "B"]


def test_batch_commands_submit_follow_download_and_cancel(service, tmp_path):
    line = {"custom_id": "a", "method": "POST", "url": "/v1/classify", "body": {"texts": ["x"]}}
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(line) + "\n")
    submitted = run("batch", "submit", str(source), "--metadata", "team=a", "--wait")
    assert submitted.exit_code == 0, submitted.output
    assert submitted.stdout == "batch_1\n"
    status = run("batch", "status", "batch_1")
    assert json.loads(status.stdout)["status"] == "completed"
    output = tmp_path / "out.jsonl"
    assert run("batch", "download", "batch_1", "-o", str(output)).exit_code == 0
    assert json.loads(output.read_text())["response"]["body"]["results"][0]["label"] == "X"
    cancelled = run("batch", "cancel", "batch_1")
    assert json.loads(cancelled.stdout)["status"] == "cancelling"
    not_yet = run("batch", "download", "batch_1")
    assert not_yet.exit_code == cli.ExitCode.BATCH_NOT_DONE and "no output yet" in not_yet.output
    missing = run("batch", "status", "batch_x")
    assert missing.exit_code == cli.ExitCode.REJECTED and "no batch" in missing.output
    assert (
        run("batch", "submit", str(source), "--metadata", "nokey").exit_code == cli.ExitCode.USAGE
    )


def test_serve_runs_serve_run_on_a_pinned_metrics_port_with_the_flags_and_offline_models(
    monkeypatch, tmp_path
):
    started: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli.os, "execve", lambda *args: started.append(args))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("CAPSERVE_SERVE_FLAGS", "haproxy")
    config = tmp_path / "serve.yaml"
    config.write_text("applications: []\n")
    result = CliRunner().invoke(cli.app, ["serve", str(config), "--address", "auto"])
    assert result.exit_code == 0, result.output
    [(executable, argv, env)] = started
    # cluster/serve_run.py starts Ray with its metrics export pinned, then `serve run`.
    assert executable == sys.executable
    assert argv == [sys.executable, "-m", "cluster.serve_run", str(config), "--address", "auto"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    monkeypatch.setenv("CAPSERVE_SERVE_FLAGS", "turbo")
    assert CliRunner().invoke(cli.app, ["serve", str(config)]).exit_code == cli.ExitCode.USAGE


def test_keys_new_prints_a_key_and_the_entry_that_admits_it() -> None:
    result = CliRunner().invoke(
        cli.app, ["keys", "new", "--name", "team-a", "-s", "classify", "-s", "batch"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.split(": ", 1)[1].split("\n", 1)[0]
    entry = ApiKey.model_validate(yaml.safe_load(result.stdout.split("api_keys:\n", 1)[1])[0])
    assert key.startswith("sk-capserve-") and entry.sha256 == key_hash(key)
    assert Authenticator([entry]).authenticate(f"Bearer {key}", "batch").name == "team-a"
    hashed = CliRunner().invoke(cli.app, ["keys", "hash"], input=f"{key}\n")
    assert hashed.stdout.strip() == key_hash(key)
    refused = CliRunner().invoke(cli.app, ["keys", "new", "--name", "team a", "-s", "root"])
    assert (
        refused.exit_code == cli.ExitCode.USAGE
        and "'classify', 'batch' or 'admin'" in refused.output
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["classify"],
        ["batch"],
        ["batch", "submit"],
        ["batch", "status"],
        ["batch", "download"],
        ["batch", "cancel"],
        ["keys"],
        ["keys", "new"],
        ["keys", "hash"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli.app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Usage: " in result.output


def test_the_exit_codes_are_in_the_help() -> None:
    output = CliRunner().invoke(cli.app, ["--help"], terminal_width=200).output
    assert "Exit codes: 0 ok, 1 rows refused, 2 usage, 3 unavailable, 4 auth" in output
