"""What happens to a finished batch's results: a plugin interface and three built-ins.

A handler runs once its batch is terminal (completed, failed, cancelled or expired). Delivery is
at-least-once: a crash between running handlers and recording that they ran makes them run again,
so every built-in is idempotent (a deterministic webhook event id, overwritten copies, inserts
that skip rows already there).

A handler is configured by type: `webhook`, `copy` or `postgres`; a user class as
`package.module:ClassName`; or the name of an entry point in the group `capserve.result_handlers`.
A class may declare `settings_model` (a pydantic model): its constructor then gets the validated
settings, else the raw settings dict.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

import fsspec
import httpx
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchjobs.schemas import BatchObject, OutputLine
from capabilities.egress import HostAllowList, PublicAddressTransport
from capabilities.webhooks import Event, WebhookSecret, WebhookSender

ENTRY_POINT_GROUP = "capserve.result_handlers"
# A run of a handler that takes longer (a hung S3 upload, a database that stopped answering) is
# given up, so the batch's slot in the runner is freed.
DEFAULT_TIMEOUT_S = 600.0
INSERT_BATCH_ROWS = 1000
CONNECT_TIMEOUT_S = 10
DEFAULT_METADATA_KEY = "webhook_url"

logger = logging.getLogger("capserve.batch")


class BatchResult(BaseModel):
    """A terminal batch and the local paths of its final output and error JSONL files."""

    batch: BatchObject
    output_path: str | None = None
    error_path: str | None = None


class ResultHandler(Protocol):
    async def handle(self, result: BatchResult) -> None:
        """Acts on a terminal batch; may run more than once for the same batch."""


class ResultHandlerConfig(BaseModel):
    """One entry of `batch.result_handlers` in the serve config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1)
    settings: dict[str, Any] = {}
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        description="How long one run of the handler may take before it counts as failed, so a "
        "hung copy or database never holds the runner's batch slot.",
    )


@dataclass(frozen=True)
class LoadedHandler:
    """A handler built from its config, with the name and timeout it runs under."""

    name: str
    handler: ResultHandler
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def of(cls, config: ResultHandlerConfig) -> LoadedHandler:
        return cls(config.type, load_handler(config), config.timeout_s)


def load_handler(config: ResultHandlerConfig) -> ResultHandler:
    """Builds the configured handler; a ValueError names the type and what is wrong."""
    handler_class = _handler_class(config.type)
    settings_model = getattr(handler_class, "settings_model", None)
    settings: Any = config.settings
    if settings_model is not None:
        try:
            settings = settings_model.model_validate(config.settings)
        except ValidationError as error:
            raise ValueError(
                f"result handler {config.type!r} has bad settings: {_describe(error)}"
            ) from None
    try:
        handler = handler_class(settings)
    except Exception as error:  # noqa: BLE001 - any failure of a constructor is a config fault
        raise ValueError(
            f"result handler {config.type!r} cannot be created: {type(error).__name__}: {error}"
        ) from None
    if not inspect.iscoroutinefunction(getattr(handler, "handle", None)):
        raise ValueError(f"result handler {config.type!r} has no `async def handle(self, result)`")
    return handler


def _handler_class(type_: str) -> type:
    if type_ in BUILT_INS:
        return BUILT_INS[type_]
    if ":" in type_:
        found = _import(type_)
    else:
        matches = list(entry_points(group=ENTRY_POINT_GROUP, name=type_))
        if not matches:
            raise ValueError(
                f"unknown result handler type {type_!r}: not built in ({', '.join(BUILT_INS)}), "
                f"not an import path 'package.module:ClassName', and no entry point of that name "
                f"in group {ENTRY_POINT_GROUP!r}"
            )
        try:
            found = matches[0].load()
        except Exception as error:  # noqa: BLE001 - the plugin's module may fail in any way
            raise ValueError(
                f"result handler {type_!r}: entry point {matches[0].value!r} cannot be loaded: "
                f"{type(error).__name__}: {error}"
            ) from None
    if not isinstance(found, type):
        # A configuration fault like the others, hence ValueError rather than TypeError.
        raise ValueError(f"result handler {type_!r} is not a class")
    return found


def _import(import_path: str) -> Any:
    module_name, _, class_name = import_path.partition(":")
    if not module_name or not class_name:
        raise ValueError(
            f"result handler type {import_path!r} must look like 'package.module:ClassName'"
        )
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except Exception as error:  # noqa: BLE001 - a user module may fail in any way as it runs
        raise ValueError(
            f"result handler {import_path!r} cannot be imported: {type(error).__name__}: {error}"
        ) from None


def _describe(error: ValidationError) -> str:
    # Field and message only: the rejected values may be secrets or passwords in URLs.
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'settings'}: {problem['msg']}"
        for problem in error.errors()
    )


def output_lines(path: str | None) -> Iterator[OutputLine]:
    """The lines of a batch's output or error file, one at a time; none when there is no file."""
    if path is None:
        return
    with Path(path).open(encoding="utf-8") as lines:
        for text in lines:
            if text.strip():
                yield OutputLine.model_validate_json(text)


async def run_handlers(
    handlers: Sequence[LoadedHandler], result: BatchResult
) -> dict[str, str | None]:
    """Runs every handler concurrently, each within its timeout; name -> None where it
    succeeded, else what went wrong."""

    async def run(loaded: LoadedHandler) -> str | None:
        deadline = asyncio.timeout(loaded.timeout_s)
        try:
            async with deadline:
                await loaded.handler.handle(result)
        except Exception as error:
            # Only our own deadline is a timeout; a TimeoutError the handler raised is its error.
            if deadline.expired():
                # A handler working in a thread (copy, postgres) goes on there, unwatched.
                logger.error(
                    "result handler %s for batch %s took more than %g s; given up",
                    loaded.name,
                    result.batch.id,
                    loaded.timeout_s,
                )
                return f"timed out after {loaded.timeout_s:g} s"
            logger.exception("result handler %s failed for batch %s", loaded.name, result.batch.id)
            return f"{type(error).__name__}: {error}"
        return None

    outcomes = await asyncio.gather(*(run(loaded) for loaded in handlers))
    return {loaded.name: outcome for loaded, outcome in zip(handlers, outcomes, strict=True)}


class CallerUrls(BaseModel):
    """Lets an API caller choose where its batch's event goes, in the batch's metadata."""

    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(
        min_length=1,
        description="Host names a caller's URL may name: `hooks.example.com`, or "
        "`*.example.com` for its subdomains. Their addresses must also be public: loopback, "
        "private and link-local ones are refused when the event is sent.",
    )
    metadata_key: str = Field(default=DEFAULT_METADATA_KEY, min_length=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        HostAllowList(value)  # a ValueError names the entry that is not a host name
        return value


class WebhookSettings(WebhookSecret):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None, description="The operator's receiver; any address, as configured."
    )
    caller_urls: CallerUrls | None = Field(
        default=None,
        description="Off unless set: a batch's metadata URL is then used in place of `url` if "
        "its host is allowed and its addresses are public.",
    )
    max_attempts: int = Field(default=5, ge=1)
    backoff_s: float = Field(default=0.5, ge=0)
    timeout_s: float = Field(default=5, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and "secret" in data:
            raise ValueError(
                "secret: a secret in the config is copied wherever the config goes; put it in "
                "an environment variable (secret_env) or a file (secret_file)"
            )
        return data

    def caller_url(self, metadata: dict[str, str] | None) -> httpx.URL | None:
        """The URL a batch's metadata chooses, where caller URLs are on; None where they are off
        or it names none; a ValueError saying why when it may not be used."""
        if self.caller_urls is None:
            return None
        key = self.caller_urls.metadata_key
        chosen = (metadata or {}).get(key)
        if chosen is None:
            return None
        try:
            url = httpx.URL(chosen)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"metadata.{key} is not an absolute http(s) URL")
        if not HostAllowList(self.caller_urls.allowed_hosts).allows(url):
            raise ValueError(
                f"metadata.{key}: host {url.host!r} is not one this server sends batch events "
                "to; ask its operator to allow it"
            )
        return url

    def check_metadata(self, metadata: dict[str, str] | None) -> None:
        """Raises a ValueError, for the caller, when a batch's metadata asks for a webhook URL
        this handler would not use."""
        if self.caller_urls is None and DEFAULT_METADATA_KEY in (metadata or {}):
            raise ValueError(
                f"metadata.{DEFAULT_METADATA_KEY}: this server sends batch events only to its "
                f"own receiver; leave {DEFAULT_METADATA_KEY} out"
            )
        self.caller_url(metadata)


def check_batch_metadata(
    handlers: Sequence[ResultHandlerConfig], metadata: dict[str, str] | None
) -> None:
    """Raises a ValueError naming the metadata key when a batch asks a webhook handler for a
    URL it would not use, so the caller hears of it when making the batch."""
    for config in handlers:
        if config.type == "webhook":
            WebhookSettings.model_validate(config.settings).check_metadata(metadata)


class WebhookHandler:
    """POSTs a signed `batch.<status>` event to the configured `url`, or, where `caller_urls`
    allows it, to the URL in the batch's metadata; receivers fetch the batch by the id in
    `data`."""

    settings_model = WebhookSettings

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        # Read now so a missing secret or a bad configured URL stops start-up instead of every
        # later delivery.
        self._secret = settings.read_secret()
        self._configured = self._sender(settings.url) if settings.url else None

    def _sender(
        self, url: str, transport: Callable[[], httpx.AsyncBaseTransport] | None = None
    ) -> WebhookSender:
        return WebhookSender(
            url,
            self._secret,
            max_attempts=self.settings.max_attempts,
            backoff_s=self.settings.backoff_s,
            timeout_s=self.settings.timeout_s,
            transport=transport,
        )

    async def handle(self, result: BatchResult) -> None:
        batch = result.batch
        try:
            chosen = self.settings.caller_url(batch.metadata)
        except ValueError as error:
            # Checked when the batch was made too; the settings may have changed since. The URL
            # came from an API client: its fault must not fail the batch's other handlers, and
            # the message names the host at most (a path may hold a token).
            logger.warning("batch %s: no webhook sent: %s", batch.id, error)
            return
        sender = self._configured
        if chosen is not None:
            sender = self._sender(str(chosen), transport=PublicAddressTransport)
        if sender is None:
            return
        if not await sender.send(batch_event(batch)):
            raise RuntimeError(f"webhook for batch {batch.id} was not delivered")


def batch_event(batch: BatchObject) -> Event:
    """The `batch.<status>` event of a terminal batch; the same batch gives the same event, so
    receivers can deduplicate a redelivery by id."""
    terminal_at = {
        "completed": batch.completed_at,
        "failed": batch.failed_at,
        "cancelled": batch.cancelled_at,
        "expired": batch.expired_at,
    }
    if batch.status not in terminal_at:
        raise ValueError(f"batch {batch.id} is {batch.status}, not terminal")
    digest = hashlib.sha256(f"{batch.id}:{batch.status}".encode()).hexdigest()
    event = Event(id=f"evt_{digest[:24]}", type=f"batch.{batch.status}", data={"id": batch.id})
    created_at = terminal_at[batch.status]
    return event if created_at is None else event.model_copy(update={"created_at": created_at})


class CopySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: str = Field(min_length=1, description="A folder or any fsspec URL.")
    storage_options: dict[str, Any] = {}


class CopyHandler:
    """Copies a batch's files to `<destination>/<batch id>/`: output.jsonl, errors.jsonl (those
    it has) and batch.json; a rerun overwrites them with the same bytes."""

    settings_model = CopySettings

    def __init__(self, settings: CopySettings) -> None:
        # Resolved now so an unknown protocol or a missing backend (s3fs...) stops start-up.
        self._fs, root = fsspec.core.url_to_fs(settings.destination, **settings.storage_options)
        self._root = root.rstrip("/")

    async def handle(self, result: BatchResult) -> None:
        await asyncio.to_thread(self._copy, result)

    def _copy(self, result: BatchResult) -> None:
        folder = f"{self._root}/{result.batch.id}"
        self._fs.makedirs(folder, exist_ok=True)
        for local, name in (
            (result.output_path, "output.jsonl"),
            (result.error_path, "errors.jsonl"),
        ):
            if local is not None:
                self._fs.put_file(local, f"{folder}/{name}")
        # Written last: its presence tells a reader the files beside it are complete.
        self._fs.pipe_file(f"{folder}/batch.json", result.batch.model_dump_json(indent=2).encode())


class PostgresSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^postgres(ql)?://")
    table: str = Field(default="capserve_batch_results", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresHandler:
    """Inserts every output and error line into a table keyed by (batch_id, custom_id), in one
    transaction; rows already there are skipped, so a rerun adds nothing."""

    settings_model = PostgresSettings

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._table = sql.Identifier(settings.table)

    async def handle(self, result: BatchResult) -> None:
        await asyncio.to_thread(self._store, result)

    def _store(self, result: BatchResult) -> None:
        # A database that does not answer fails this handler instead of holding the batch.
        with psycopg.connect(self.settings.url, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            self._create_table(connection)
            insert = sql.SQL(
                "INSERT INTO {} (batch_id, custom_id, status_code, response, error) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            ).format(self._table)
            with connection.transaction(), connection.cursor() as cursor:
                rows: list[tuple[Any, ...]] = []
                lines = chain(output_lines(result.output_path), output_lines(result.error_path))
                for line in lines:
                    rows.append(_row(result.batch.id, line))
                    if len(rows) >= INSERT_BATCH_ROWS:
                        cursor.executemany(insert, rows)
                        rows.clear()
                if rows:
                    cursor.executemany(insert, rows)

    def _create_table(self, connection: psycopg.Connection[Any]) -> None:
        create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            "batch_id text NOT NULL, custom_id text NOT NULL, status_code int NULL, "
            "response jsonb NULL, error jsonb NULL, created_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (batch_id, custom_id))"
        ).format(self._table)
        with connection.transaction():
            # IF NOT EXISTS alone races (two creators at once, one fails on the table's type):
            # a lock on the table's name makes creators, in any process, take turns.
            connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.settings.table,))
            connection.execute(create)


def _row(batch_id: str, line: OutputLine) -> tuple[Any, ...]:
    response = line.response
    return (
        batch_id,
        line.custom_id,
        response.status_code if response else None,
        Jsonb(response.model_dump(mode="json")) if response else None,
        Jsonb(line.error.model_dump(mode="json")) if line.error else None,
    )


BUILT_INS: dict[str, type] = {
    "webhook": WebhookHandler,
    "copy": CopyHandler,
    "postgres": PostgresHandler,
}
