import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from pathlib import Path

import fsspec
import httpx
import psycopg
import pytest

from batchjobs.handlers import (
    BatchResult,
    CopyHandler,
    LoadedHandler,
    PostgresHandler,
    ResultHandler,
    ResultHandlerConfig,
    WebhookHandler,
    check_batch_metadata,
    load_handler,
    run_handlers,
)
from batchjobs.schemas import BatchObject
from capabilities import egress
from capabilities.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, Event, verify
from examples.custom_result_handler import LabelSummary
from tests.http_receiver import HttpReceiver

SECRET = "whsec_test"
SECRET_ENV = "CAPSERVE_TEST_WEBHOOK_SECRET"
FINISHED_AT = 1_700_000_100
STAMPS = {
    "completed": "completed_at",
    "failed": "failed_at",
    "cancelled": "cancelled_at",
    "expired": "expired_at",
}


def make_batch(status: str = "completed", **overrides) -> BatchObject:
    fields = {
        "id": f"batch_{uuid.uuid4().hex[:12]}",
        "endpoint": "/v1/classify",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "created_at": 1_700_000_000,
        STAMPS.get(status, "in_progress_at"): FINISHED_AT,
    }
    return BatchObject.model_validate(fields | overrides)


# Every output line is a span of its batch's trace.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ok_line(custom_id: str, labels: list[str | None]) -> dict:
    results = [{"index": i, "id": None} | ({"label": x} if x else {}) for i, x in enumerate(labels)]
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": f"req_{custom_id}",
            "traceparent": TRACEPARENT,
            "body": {"id": f"req_{custom_id}", "object": "classification.list", "results": results},
        },
        "error": None,
    }


OUTPUT_LINES = [
    ok_line("a", ["card_arrival", "top_up_failed"]),
    ok_line("b", ["card_arrival"]),
    ok_line("c", ["card_arrival", None]),
]
ERROR_LINES = [
    {
        "id": "batch_req_d",
        "custom_id": "d",
        "response": {
            "status_code": 400,
            "request_id": "req_d",
            "traceparent": TRACEPARENT,
            "body": {"error": {"message": "items must not be empty", "code": "invalid_items"}},
        },
        "error": None,
    },
    {
        "id": "batch_req_e",
        "custom_id": "e",
        "response": None,
        "error": {"code": "batch_expired", "message": "not run before the batch expired"},
    },
]


def write_jsonl(path: Path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@pytest.fixture()
def result(tmp_path: Path) -> BatchResult:
    return BatchResult(
        batch=make_batch(),
        output_path=write_jsonl(tmp_path / "output.jsonl", OUTPUT_LINES),
        error_path=write_jsonl(tmp_path / "errors.jsonl", ERROR_LINES),
    )


@pytest.fixture()
def receiver():
    with HttpReceiver() as server:
        yield server


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def webhook(**settings) -> ResultHandler:
    config = {"secret_env": SECRET_ENV, "backoff_s": 0.01, "timeout_s": 2} | settings
    return load_handler(ResultHandlerConfig(type="webhook", settings=config))


def callers_may_choose(*hosts: str, **caller_urls) -> dict:
    return {"caller_urls": {"allowed_hosts": list(hosts), **caller_urls}}


def resolving_to(monkeypatch, address: str, public: set[str]) -> None:
    """Every name resolves to `address`; the addresses in `public` count as public (only
    loopback can reach a test's receiver)."""

    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    monkeypatch.setattr(egress, "resolve", resolve)
    monkeypatch.setattr(egress, "is_public", lambda ip: str(ip) in public)


def at_host(url: str, host: str) -> str:
    """`url` with its host replaced by `host`, port and path kept."""
    return str(httpx.URL(url).copy_with(host=host))


# --- webhook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(STAMPS))
async def test_webhook_posts_a_signed_deterministic_event_per_terminal_status(receiver, status):
    batch = make_batch(status)
    handler = webhook(url=receiver.url)
    await handler.handle(BatchResult(batch=batch))
    await handler.handle(BatchResult(batch=batch))  # a redelivery, as after a crash
    first, second = receiver.requests
    assert verify(SECRET, first.headers[SIGNATURE_HEADER.lower()], first.body)
    assert not verify("another secret", first.headers[SIGNATURE_HEADER.lower()], first.body)
    event = Event.model_validate_json(first.body)
    digest = hashlib.sha256(f"{batch.id}:{status}".encode()).hexdigest()
    assert event == Event(
        id=f"evt_{digest[:24]}",
        type=f"batch.{status}",
        created_at=FINISHED_AT,
        data={"id": batch.id},
    )
    assert first.headers[EVENT_ID_HEADER.lower()] == event.id
    assert second.body == first.body  # receivers can deduplicate by id


async def test_webhook_ignores_a_metadata_url_unless_caller_urls_are_on():
    with HttpReceiver() as configured, HttpReceiver() as chosen:
        batch = make_batch(metadata={"webhook_url": chosen.url})
        await webhook(url=configured.url).handle(BatchResult(batch=batch))
        assert chosen.requests == []
        assert len(configured.requests) == 1


async def test_webhook_sends_to_an_allowed_metadata_url_instead_of_the_configured_one(
    monkeypatch,
):
    resolving_to(monkeypatch, "127.0.0.1", public={"127.0.0.1"})
    with HttpReceiver() as configured, HttpReceiver() as chosen:
        url = at_host(chosen.url, "hooks.example.com")
        batch = make_batch(metadata={"webhook_url": url})
        settings = callers_may_choose("hooks.example.com")
        await webhook(url=configured.url, **settings).handle(BatchResult(batch=batch))
        assert configured.requests == []
        [request] = chosen.requests
        assert request.headers["host"] == httpx.URL(url).netloc.decode()


async def test_webhook_metadata_key_is_configurable(monkeypatch):
    resolving_to(monkeypatch, "127.0.0.1", public={"127.0.0.1"})
    with HttpReceiver() as chosen:
        batch = make_batch(metadata={"notify": at_host(chosen.url, "hooks.example.com")})
        settings = callers_may_choose("hooks.example.com", metadata_key="notify")
        await webhook(**settings).handle(BatchResult(batch=batch))
        assert len(chosen.requests) == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.5"])
async def test_webhook_refuses_an_allowed_host_that_resolves_to_an_internal_address(
    monkeypatch, caplog, address
):
    # Allowed when the batch was made; by the time it ends, the name points inside.
    resolving_to(monkeypatch, address, public=set())
    with HttpReceiver() as chosen:
        url = at_host(chosen.url, "hooks.example.com")
        batch = make_batch(metadata={"webhook_url": url})
        settings = {"secret_env": SECRET_ENV} | callers_may_choose("hooks.example.com")
        check_batch_metadata(
            [ResultHandlerConfig(type="webhook", settings=settings)], batch.metadata
        )
        with (
            caplog.at_level(logging.WARNING, logger="capserve.webhooks"),
            pytest.raises(RuntimeError, match="not delivered"),
        ):
            await webhook(**callers_may_choose("hooks.example.com")).handle(
                BatchResult(batch=batch)
            )
        assert chosen.requests == []
    assert f"refused: hooks.example.com resolves to ['{address}']" in caplog.text


async def test_webhook_skips_a_metadata_url_whose_host_is_not_allowed(receiver, caplog):
    batch = make_batch(metadata={"webhook_url": f"{receiver.url}?token=t0ken"})
    settings = callers_may_choose("hooks.example.com")
    with caplog.at_level(logging.WARNING, logger="capserve.batch"):
        await webhook(url=receiver.url, **settings).handle(BatchResult(batch=batch))
    assert receiver.requests == []
    assert "host '127.0.0.1' is not one this server sends batch events to" in caplog.text
    assert "t0ken" not in caplog.text


async def test_webhook_without_any_url_sends_nothing(receiver):
    batch = make_batch(metadata={"another_key": receiver.url})
    await webhook(**callers_may_choose("hooks.example.com")).handle(BatchResult(batch=batch))
    assert receiver.requests == []


async def test_webhook_retries_after_a_server_error(receiver):
    receiver.fail_next(1, 500)
    await webhook(url=receiver.url).handle(BatchResult(batch=make_batch()))
    first, second = receiver.requests
    assert first.headers[EVENT_ID_HEADER.lower()] == second.headers[EVENT_ID_HEADER.lower()]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "/relative", "not a url", "https:///x", "http://a\nb"]
)
async def test_webhook_skips_a_bad_metadata_url_with_a_warning(receiver, caplog, url):
    batch = make_batch(metadata={"webhook_url": url})
    settings = callers_may_choose("example.com")
    with caplog.at_level(logging.WARNING, logger="capserve.batch"):
        await webhook(url=receiver.url, **settings).handle(BatchResult(batch=batch))
    assert receiver.requests == []
    assert f"batch {batch.id}: no webhook sent: metadata.webhook_url is not an absolute" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("settings", "metadata", "problem"),
    [
        ({}, {"webhook_url": "https://hooks.example.com/x"}, "only to its own receiver"),
        (
            callers_may_choose("hooks.example.com"),
            {"webhook_url": "https://169.254.169.254/latest"},
            "host '169.254.169.254' is not one this server sends batch events to",
        ),
        (callers_may_choose("hooks.example.com"), {"webhook_url": "file:///x"}, "not an absolute"),
        ({}, {"team": "a"}, None),
        (
            callers_may_choose("hooks.example.com"),
            {"webhook_url": "https://hooks.example.com"},
            None,
        ),
    ],
)
def test_a_batch_asking_for_a_webhook_url_it_would_not_get_is_refused_when_made(
    settings, metadata, problem
):
    configs = [
        ResultHandlerConfig(type="copy", settings={"destination": "memory://x"}),
        ResultHandlerConfig(type="webhook", settings={"secret_env": SECRET_ENV} | settings),
    ]
    if problem is None:
        check_batch_metadata(configs, metadata)
    else:
        with pytest.raises(ValueError, match=problem):
            check_batch_metadata(configs, metadata)


def test_webhook_reads_its_secret_from_a_file(tmp_path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    handler = load_handler(
        ResultHandlerConfig(
            type="webhook", settings={"secret_file": str(tmp_path / "secret"), "url": "http://h"}
        )
    )
    assert isinstance(handler, WebhookHandler) and handler._secret == SECRET


async def test_webhook_that_is_not_delivered_fails_the_handler(receiver):
    receiver.fail_next(1, 400)
    with pytest.raises(RuntimeError, match="not delivered"):
        await webhook(url=receiver.url).handle(BatchResult(batch=make_batch()))


async def test_webhook_refuses_a_batch_that_is_not_terminal(receiver):
    with pytest.raises(ValueError, match="in_progress, not terminal"):
        await webhook(url=receiver.url).handle(BatchResult(batch=make_batch("in_progress")))
    assert receiver.requests == []


# --- copy ------------------------------------------------------------------------------------


def copy_handler(destination: str) -> ResultHandler:
    return load_handler(ResultHandlerConfig(type="copy", settings={"destination": destination}))


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
async def test_copy_to_a_local_folder_twice(result, tmp_path, as_url):
    destination = tmp_path / "copies"
    handler = copy_handler(f"file://{destination}" if as_url else str(destination))
    for _ in range(2):  # a rerun overwrites with the same bytes
        await handler.handle(result)
    folder = destination / result.batch.id
    assert sorted(path.name for path in folder.iterdir()) == [
        "batch.json",
        "errors.jsonl",
        "output.jsonl",
    ]
    assert (folder / "output.jsonl").read_bytes() == Path(result.output_path).read_bytes()
    assert (folder / "errors.jsonl").read_bytes() == Path(result.error_path).read_bytes()
    assert BatchObject.model_validate_json((folder / "batch.json").read_text()) == result.batch


async def test_copy_to_memory_fs_twice_and_without_an_error_file(result):
    prefix = f"capserve-test-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    try:
        handler = copy_handler(f"memory://{prefix}/results")
        only_output = result.model_copy(update={"error_path": None})
        for _ in range(2):
            await handler.handle(only_output)
        folder = f"/{prefix}/results/{result.batch.id}"
        assert sorted(memory.ls(folder, detail=False)) == [
            f"{folder}/batch.json",
            f"{folder}/output.jsonl",
        ]
        assert memory.cat_file(f"{folder}/output.jsonl") == Path(result.output_path).read_bytes()
        batch_json = memory.cat_file(f"{folder}/batch.json")
        assert BatchObject.model_validate_json(batch_json) == result.batch
    finally:
        memory.rm(f"/{prefix}", recursive=True)


# --- postgres --------------------------------------------------------------------------------


def postgres_handler(url: str, table: str) -> ResultHandler:
    settings = {"url": url, "table": table}
    return load_handler(ResultHandlerConfig(type="postgres", settings=settings))


def stored_rows(url: str, table: str, batch_id: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute(
            f"SELECT custom_id, status_code, response, error FROM {table} "
            "WHERE batch_id = %s ORDER BY custom_id",
            (batch_id,),
        ).fetchall()


async def test_postgres_stores_every_line_once_even_when_run_twice(postgres_url, result):
    table = f"results_{uuid.uuid4().hex[:8]}"
    handler = postgres_handler(postgres_url, table)
    for _ in range(2):
        await handler.handle(result)
    expected = [
        (
            line["custom_id"],
            line["response"]["status_code"] if line["response"] else None,
            line["response"],
            line["error"],
        )
        for line in OUTPUT_LINES + ERROR_LINES
    ]
    assert stored_rows(postgres_url, table, result.batch.id) == expected


async def test_postgres_stores_large_files_and_keeps_batches_apart(postgres_url, tmp_path):
    table = f"results_{uuid.uuid4().hex[:8]}"
    handler = postgres_handler(postgres_url, table)
    lines = [ok_line(f"line-{number}", ["card_arrival"]) for number in range(2500)]
    output = write_jsonl(tmp_path / "big.jsonl", lines)
    batches = [make_batch(), make_batch()]
    await asyncio.gather(
        *(handler.handle(BatchResult(batch=batch, output_path=output)) for batch in batches)
    )
    with psycopg.connect(postgres_url) as connection:
        counts = connection.execute(
            f"SELECT batch_id, count(*) FROM {table} GROUP BY batch_id ORDER BY batch_id"
        ).fetchall()
    assert counts == sorted((batch.id, 2500) for batch in batches)


async def test_postgres_handlers_creating_one_table_at_once_all_succeed(postgres_url, result):
    # CREATE TABLE IF NOT EXISTS alone lets one of two simultaneous creators fail.
    for _ in range(5):
        table = f"results_{uuid.uuid4().hex[:8]}"
        handlers = [LoadedHandler(str(n), postgres_handler(postgres_url, table)) for n in range(6)]
        outcome = await run_handlers(handlers, result)
        assert outcome == dict.fromkeys(outcome, None)
        assert len(stored_rows(postgres_url, table, result.batch.id)) == 5


@pytest.mark.parametrize("table", ["results; DROP TABLE x", "1results", "a" * 64, "results-x"])
def test_postgres_rejects_a_table_name_that_is_not_an_identifier(table):
    with pytest.raises(ValueError, match=r"'postgres' has bad settings: table: String should"):
        postgres_handler("postgresql://localhost/db", table)


# --- load_handler ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "settings", "expected"),
    [
        ("webhook", {"secret_env": SECRET_ENV}, WebhookHandler),
        ("copy", {"destination": "memory://x"}, CopyHandler),
        ("postgres", {"url": "postgresql://localhost/db"}, PostgresHandler),
        ("examples.custom_result_handler:LabelSummary", {"folder": "/tmp/x"}, LabelSummary),
    ],
)
def test_load_handler_builds_built_ins_and_import_paths(type_, settings, expected):
    assert isinstance(load_handler(ResultHandlerConfig(type=type_, settings=settings)), expected)


class RawSettingsHandler:
    """A user handler without a settings model: it gets the settings dict as it is."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings

    async def handle(self, result: BatchResult) -> None:
        """Does nothing."""


def test_load_handler_passes_raw_settings_to_a_class_without_a_settings_model():
    config = ResultHandlerConfig(
        type="tests.unit.test_result_handlers:RawSettingsHandler", settings={"any": [1, 2]}
    )
    handler = load_handler(config)
    assert isinstance(handler, RawSettingsHandler)
    assert handler.settings == {"any": [1, 2]}


def test_load_handler_finds_entry_points(tmp_path, monkeypatch):
    dist_info = tmp_path / "capserve_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: capserve-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[capserve.result_handlers]\n"
        "label-summary = examples.custom_result_handler:LabelSummary\n"
        "broken = examples.nowhere:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ResultHandlerConfig(type="label-summary", settings={"folder": str(tmp_path)})
    assert isinstance(load_handler(config), LabelSummary)
    with pytest.raises(ValueError, match=r"'broken': entry point .* cannot be loaded"):
        load_handler(ResultHandlerConfig(type="broken"))


@pytest.mark.parametrize(
    ("type_", "settings", "message"),
    [
        ("smtp", {}, r"unknown result handler type 'smtp': not built in \(webhook, copy, postgres"),
        (
            "examples.nowhere:Thing",
            {},
            r"'examples.nowhere:Thing' cannot be imported: ModuleNotFoundError",
        ),
        (
            "examples.custom_result_handler:Nope",
            {},
            r"'examples.custom_result_handler:Nope' cannot be imported: AttributeError",
        ),
        (":Thing", {}, r"':Thing' must look like 'package.module:ClassName'"),
        ("examples.custom_result_handler:", {}, r"must look like 'package.module:ClassName'"),
        ("batchjobs.handlers:ENTRY_POINT_GROUP", {}, r"is not a class"),
        ("collections:OrderedDict", {}, r"'collections:OrderedDict' has no `async def handle"),
        ("webhook", {}, r"'webhook' has bad settings: .*exactly one of secret_env .* and "),
        (
            "webhook",
            {"secret": SECRET},
            (
                r"'webhook' has bad settings: .*secret: .* environment variable \(secret_env\) "
                r"or a file \(secret_file\)"
            ),
        ),
        (
            "webhook",
            {"secret_env": "CAPSERVE_TEST_UNSET_SECRET"},
            (
                r"'webhook' cannot be created: ValueError: environment variable "
                r"CAPSERVE_TEST_UNSET_SECRET \(secret_env\) holding the signing secret is not set"
            ),
        ),
        (
            "webhook",
            {"secret_env": SECRET_ENV, "max_attempts": 0, "retries": 3},
            r"bad settings: max_attempts: Input should be greater .*; retries: Extra inputs",
        ),
        ("webhook", {"secret_env": SECRET_ENV, "url": "ftp://h/x"}, r"cannot be created: .*"),
        (
            "webhook",
            {"secret_env": SECRET_ENV, "caller_urls": {"allowed_hosts": ["https://h/x"]}},
            r"bad settings: caller_urls.allowed_hosts: .*'https://h/x' is not a host name",
        ),
        ("copy", {}, r"'copy' has bad settings: destination: Field required"),
        ("copy", {"destination": "nope://bucket"}, r"'copy' cannot be created: ValueError"),
        ("postgres", {"url": "mysql://h/db"}, r"'postgres' has bad settings: url: String should"),
        (
            "examples.custom_result_handler:LabelSummary",
            {"directory": "/tmp"},
            r"bad settings: folder: Field required; directory: Extra inputs are not permitted",
        ),
    ],
)
def test_load_handler_says_what_is_wrong(type_, settings, message):
    with pytest.raises(ValueError, match=message):
        load_handler(ResultHandlerConfig(type=type_, settings=settings))


def test_load_handler_does_not_echo_rejected_settings():
    secret_url = "mysql://user:hunter2@h/db"
    with pytest.raises(ValueError) as raised:
        load_handler(ResultHandlerConfig(type="postgres", settings={"url": secret_url}))
    assert "hunter2" not in str(raised.value)


def test_result_handler_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="options"):
        ResultHandlerConfig.model_validate({"type": "copy", "options": {}})


# --- run_handlers ----------------------------------------------------------------------------


class Failing:
    async def handle(self, result: BatchResult) -> None:
        raise RuntimeError(f"disk full while handling {result.batch.id}")


class Slow:
    def __init__(self) -> None:
        self.handled: list[str] = []

    async def handle(self, result: BatchResult) -> None:
        await asyncio.sleep(0.3)
        self.handled.append(result.batch.id)


async def test_run_handlers_reports_a_failure_without_stopping_the_others(result, caplog):
    slow, other = Slow(), Slow()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="capserve.batch"):
        outcome = await run_handlers(
            [
                LoadedHandler("slow", slow),
                LoadedHandler("failing", Failing()),
                LoadedHandler("other", other),
            ],
            result,
        )
    assert time.monotonic() - started < 0.55  # concurrently, not one after another
    assert outcome == {
        "slow": None,
        "failing": f"RuntimeError: disk full while handling {result.batch.id}",
        "other": None,
    }
    assert slow.handled == other.handled == [result.batch.id]
    assert f"result handler failing failed for batch {result.batch.id}" in caplog.text


class Hung:
    """A copy to a store that stopped answering, in a thread as the built-ins copy."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def handle(self, result: BatchResult) -> None:
        await asyncio.to_thread(self.release.wait)


async def test_a_hung_handler_is_given_up_after_its_timeout(result, caplog):
    hung, other = Hung(), Slow()
    try:
        with caplog.at_level(logging.ERROR, logger="capserve.batch"):
            outcome = await asyncio.wait_for(
                run_handlers(
                    [LoadedHandler("copy", hung, timeout_s=0.2), LoadedHandler("other", other)],
                    result,
                ),
                10,  # before, run_handlers waited for the copy for ever, and the batch with it
            )
    finally:
        hung.release.set()
    assert outcome == {"copy": "timed out after 0.2 s", "other": None}
    assert other.handled == [result.batch.id]
    assert f"result handler copy for batch {result.batch.id} took more than 0.2 s" in caplog.text


async def test_a_timeout_the_handler_raises_itself_is_its_error(result):
    class Raising:
        async def handle(self, result: BatchResult) -> None:
            raise TimeoutError("S3 said slow down")

    outcome = await run_handlers([LoadedHandler("copy", Raising(), timeout_s=30)], result)
    assert outcome == {"copy": "TimeoutError: S3 said slow down"}


def test_a_handler_runs_under_its_configured_timeout(tmp_path):
    config = ResultHandlerConfig(type="copy", settings={"destination": str(tmp_path)})
    assert LoadedHandler.of(config).timeout_s == 600
    quick = config.model_copy(update={"timeout_s": 30})
    assert (LoadedHandler.of(quick).name, LoadedHandler.of(quick).timeout_s) == ("copy", 30)
    with pytest.raises(ValueError, match="greater than 0"):
        ResultHandlerConfig(type="copy", timeout_s=0)


async def test_run_handlers_with_no_handlers(result):
    assert await run_handlers([], result) == {}


# --- the example handler ---------------------------------------------------------------------


async def test_label_summary_counts_labels_and_rewrites_the_same_summary(result, tmp_path):
    folder = tmp_path / "summaries"
    config = ResultHandlerConfig(
        type="examples.custom_result_handler:LabelSummary", settings={"folder": str(folder)}
    )
    handler = load_handler(config)
    for _ in range(2):
        await handler.handle(result)
    assert [path.name for path in folder.iterdir()] == [f"{result.batch.id}.labels.json"]
    assert json.loads((folder / f"{result.batch.id}.labels.json").read_text()) == {
        "batch_id": result.batch.id,
        "status": "completed",
        "succeeded_lines": 3,
        "failed_lines": 2,
        "items": 5,
        "labels": {"card_arrival": 3, "top_up_failed": 1},
    }


async def test_label_summary_ignores_other_endpoints(result, tmp_path):
    settings = LabelSummary.settings_model(folder=tmp_path / "summaries")
    chat = result.model_copy(update={"batch": make_batch(endpoint="/v1/chat/completions")})
    await LabelSummary(settings).handle(chat)
    assert not (tmp_path / "summaries").exists()
