"""The `capserve` command: serve the app, classify files against it, run batch jobs, make keys.

Every command says what it does with `--help`. Exit codes (`ExitCode`) are the same for every
command, so scripts can tell a refused row from a bad key from a server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO, TypeVar

import typer
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from batchjobs.schemas import Endpoint
from capserve.batch_feed import BatchEndedError, BatchFeed, state_path
from capserve.client import (
    DEFAULT_URL,
    AsyncClient,
    AuthenticationError,
    BatchObject,
    CapserveError,
    Client,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServerUnreachableError,
    Strategy,
)
from capserve.feeder import Feeder, Request, chunked
from capserve.keys import SCOPES, key_hash, new_key
from capserve.rows import (
    InputFormat,
    Outcome,
    Output,
    OutputFormat,
    Row,
    RowError,
    RowsError,
    input_format,
    output_format,
    peek,
    read_rows,
)
from capserve.tracing import TraceParent

T = TypeVar("T")


class ExitCode(IntEnum):
    OK = 0
    ROWS_REFUSED = 1
    """Done, but the service refused some rows: their errors are in the output."""
    USAGE = 2
    """Bad arguments, input or output file (what the message names)."""
    UNAVAILABLE = 3
    """The service could not be reached, stayed overloaded past the retry time, or failed."""
    AUTH = 4
    """The API key is missing, unknown, or lacks the scope the call needs."""
    REJECTED = 5
    """The service refused the request itself (an unknown batch, a file too large, …)."""
    BATCH_NOT_DONE = 6
    """The batch failed, expired or was cancelled, or has no output yet."""
    INTERRUPTED = 130


EXIT_CODES_HELP = "Exit codes: " + ", ".join(
    f"{code.value} {code.name.lower().replace('_', ' ')}" for code in ExitCode
)

app = typer.Typer(
    help="Serve capserve, classify files against it, run batch jobs and make API keys.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    # Tracebacks with locals would print the API key.
    pretty_exceptions_enable=False,
)
batch_app = typer.Typer(
    help="OpenAI-style batch jobs: submit a JSONL file, follow it, fetch its output.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="API keys: make one with its config entry, or hash one.", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")
app.add_typer(keys_app, name="keys")


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str | None


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _fail(code: ExitCode, message: str) -> NoReturn:
    _echo(f"capserve: {message}")
    raise typer.Exit(code)


def exit_code_of(error: Exception) -> ExitCode:
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        return ExitCode.AUTH
    if isinstance(error, ServerError | ServerUnreachableError | RateLimitError):
        return ExitCode.UNAVAILABLE
    if isinstance(error, BatchEndedError):
        return ExitCode.BATCH_NOT_DONE
    if isinstance(error, RowsError):
        return ExitCode.USAGE
    return ExitCode.REJECTED


@contextlib.contextmanager
def _exits() -> Iterator[None]:
    """Known failures become their exit code and a one-line message, never a traceback."""
    try:
        yield
    except (CapserveError, BatchEndedError, RowsError) as error:
        _fail(exit_code_of(error), str(error))


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    with _exits():
        try:
            return asyncio.run(coroutine)
        except KeyboardInterrupt:
            _fail(ExitCode.INTERRUPTED, "interrupted; run the same command again to continue")


@app.callback()
def main(
    context: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="CAPSERVE_URL", help="The service's base URL.")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="CAPSERVE_API_KEY", help="Sent as 'Authorization: Bearer <key>'."),
    ] = None,
) -> None:
    context.obj = Connection(url, api_key)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    context: typer.Context,
    config: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="The Serve config to run.")
    ] = Path("serve_config.yaml"),
) -> None:
    """Serve CONFIG with Ray Serve (`serve run CONFIG`): what `make run` runs.

    Offline Hugging Face (HF_HUB_OFFLINE=1 unless set), Ray Serve's modes from
    CAPSERVE_SERVE_FLAGS (cluster/serve_flags.py) and Ray's metrics export on port 8080
    (CAPSERVE_METRICS_PORT; cluster/serve_run.py); arguments after CONFIG go to `serve run`.
    """
    if importlib.util.find_spec("ray") is None:
        _fail(ExitCode.USAGE, "serving needs the server install: pip install 'capserve[cpu]'")
    from cluster.serve_flags import ray_env, selected_flags

    try:
        flags = selected_flags()
    except ValueError as error:
        _fail(ExitCode.USAGE, str(error))
    env = {"HF_HUB_OFFLINE": "1"} | dict(os.environ) | ray_env(flags)
    # A fresh interpreter: Ray reads the flags from the environment when it is first imported.
    command = [sys.executable, "-m", "cluster.serve_run", str(config), *context.args]
    os.execve(sys.executable, command, env)


@dataclass(frozen=True)
class ClassifyOptions:
    input: str
    output: Path | None
    input_format: InputFormat | None
    output_format: OutputFormat | None
    text_column: str
    id_column: str
    capabilities: list[str]
    strategy: Strategy | None
    concurrency: int
    items_per_request: int
    batch: bool
    progress: bool


@app.command(epilog=EXIT_CODES_HELP)
def classify(
    context: typer.Context,
    input: Annotated[str, typer.Argument(help="A CSV, JSONL or text file; - reads stdin.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where records go (.csv: CSV, else JSON lines); stdout if left out. Run again "
            "with the same file to continue where a run stopped.",
        ),
    ] = None,
    input_format_: Annotated[
        InputFormat | None,
        typer.Option("--input-format", help="csv, jsonl or lines; else from the file name."),
    ] = None,
    output_format_: Annotated[
        OutputFormat | None,
        typer.Option("--output-format", help="jsonl or csv; else from the output's name."),
    ] = None,
    text_column: Annotated[
        str, typer.Option(help="The CSV column or JSON key of the text.")
    ] = "text",
    id_column: Annotated[
        str, typer.Option(help="The CSV column or JSON key of an id to copy to the output.")
    ] = "id",
    capability: Annotated[
        list[str] | None,
        typer.Option(
            "--capability",
            "-c",
            help="Capabilities to run (repeat); the service's default if none.",
        ),
    ] = None,
    strategy: Annotated[
        Strategy | None,
        typer.Option(help="Classification strategy; the service's default if none."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 4,
    items_per_request: Annotated[
        int | None,
        typer.Option(min=1, help="Texts per request; the service's limit if left out."),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch", help="Send the rows through the Batch API (needs --output): for large files."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Classify every text of INPUT; one output record per text, in input order.

    Texts are sent in requests at the service's item limit, several at once; a request the
    service refuses for one text is split until that text stands alone with its error.
    """
    options = ClassifyOptions(
        input,
        output,
        input_format_,
        output_format_,
        text_column,
        id_column,
        capability or [],
        strategy,
        concurrency,
        items_per_request or sys.maxsize,
        batch,
        progress,
    )
    if batch and output is None:
        _fail(ExitCode.USAGE, "--batch needs --output FILE (where the batch's state is kept too)")
    refused = _run(_classify(context.obj, options))
    if refused:
        _fail(ExitCode.ROWS_REFUSED, f"the service refused {refused} rows; see 'error' in output")


@contextlib.contextmanager
def _opened(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdin
        return
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            yield stream
    except OSError as error:
        raise RowsError(f"cannot read {path}: {error.strerror}") from None


def _rows(stream: TextIO, options: ClassifyOptions, done: int) -> tuple[Iterator[Row], int | None]:
    """The rows after the first `done`, and how many rows the input has (None for stdin)."""
    first_line, lines = peek(stream)
    fmt = options.input_format or input_format(options.input, first_line)
    total = None
    if options.input != "-":
        with _opened(options.input) as again:
            total = sum(1 for _ in read_rows(again, fmt, options.text_column, options.id_column))
        if done > total:
            raise RowsError(f"{options.output} has {done} records but the input {total} rows")
    rows = read_rows(lines, fmt, options.text_column, options.id_column)
    return itertools.islice(rows, done, None), total


async def _classify(connection: Connection, options: ClassifyOptions) -> int:
    """Classifies the rows the output does not hold yet; the number of rows refused."""
    async with AsyncClient(
        connection.url, connection.api_key, max_connections=options.concurrency
    ) as client:
        listing = await client.capabilities()
        unknown = sorted(set(options.capabilities) - set(listing.names))
        if unknown:
            raise RowsError(f"no capability {unknown}; the service runs {listing.names}")
        asked = options.capabilities or [card.id for card in listing.data if card.default]
        out = Output(options.output_format or output_format(options.output), asked)
        done = out.resume_point(options.output) if options.output else 0
        trace = TraceParent.new()
        _echo(f"trace id {trace.trace_id} (in every request's traceparent)")
        request = Request(options.capabilities or None, options.strategy)
        feeder = Feeder(client, request, options.concurrency, trace, f"cli-{trace.trace_id[:8]}")
        with _opened(options.input) as stream, _sink(options.output, out) as sink:
            rows, total = _rows(stream, options, done)
            if done and done == total:
                _echo(f"{options.output} already answers all {total} rows")
            elif done:
                _echo(f"{options.output} holds rows 1-{done}: continuing after them")
            chunks = chunked(rows, listing.limits, options.items_per_request)
            with tqdm(
                total=total,
                initial=done,
                unit=" texts",
                disable=not options.progress,
                file=sys.stderr,
                dynamic_ncols=True,
            ) as bar:
                if options.batch:
                    assert options.output is not None
                    feed = BatchFeed(client, feeder, request, state_path(options.output), trace)
                    answers = feed.feed(list(chunks), lambda batch: _batch_postfix(bar, batch))
                else:
                    answers = feeder.feed(chunks)
                return await _write(answers, sink, out, bar)


def _batch_postfix(bar: tqdm, batch: BatchObject) -> None:
    counts = batch.request_counts
    lines = f"{counts.completed + counts.failed}/{counts.total} lines"
    bar.set_postfix_str(f"batch {batch.id} {batch.status}, {lines}")


@contextlib.contextmanager
def _sink(path: Path | None, out: Output) -> Iterator[TextIO]:
    if path is None:
        sys.stdout.write(out.header())
        yield sys.stdout
        return
    try:
        with path.open("a", encoding="utf-8", newline="") as sink:
            if sink.tell() == 0:
                sink.write(out.header())
            yield sink
    except OSError as error:
        raise RowsError(f"cannot write {path}: {error.strerror}") from None


async def _write(
    answers: AsyncIterator[tuple[list[Row], list[Outcome]]], sink: TextIO, out: Output, bar: tqdm
) -> int:
    refused = 0
    async for rows, outcomes in answers:
        # One write per chunk, flushed: a kill leaves at most the last line unfinished.
        sink.write(out.records(rows, outcomes))
        sink.flush()
        refused += sum(isinstance(outcome, RowError) for outcome in outcomes)
        bar.update(len(rows))
    return refused


def _client(context: typer.Context) -> Client:
    connection: Connection = context.obj
    return Client(connection.url, connection.api_key)


def _wait(client: Client, batch_id: str) -> BatchObject:
    with tqdm(unit=" lines", file=sys.stderr, dynamic_ncols=True) as bar:

        def update(batch: BatchObject) -> None:
            bar.total = batch.request_counts.total or None
            bar.n = batch.request_counts.completed + batch.request_counts.failed
            bar.set_postfix_str(batch.status)

        return client.wait_batch(batch_id, on_update=update)


def _ended(batch: BatchObject) -> None:
    if batch.status != "completed":
        _fail(ExitCode.BATCH_NOT_DONE, f"batch {batch.id} {batch.status}")


@batch_app.command("submit", epilog=EXIT_CODES_HELP)
def batch_submit(
    context: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="Batch input: a JSON request per line."),
    ],
    endpoint: Annotated[Endpoint, typer.Option(help="What every line calls.")] = "/v1/classify",
    metadata: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE kept with the batch (repeat).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow it to the end.")] = False,
) -> None:
    """Upload FILE and start a batch over it; print the batch id."""
    pairs = [item.partition("=") for item in metadata or []]
    if any(not sep for _, sep, _ in pairs):
        _fail(ExitCode.USAGE, "--metadata takes KEY=VALUE")
    with _exits(), _client(context) as client:
        upload = client.upload_file(file)
        trace = TraceParent.new()
        batch = client.create_batch(
            upload.id, endpoint, {key: value for key, _, value in pairs} or None, trace
        )
        _echo(f"{file} uploaded as {upload.id}; batch {batch.id} {batch.status}; trace {trace}")
        typer.echo(batch.id)
        if wait:
            _ended(_wait(client, batch.id))


@batch_app.command("status", epilog=EXIT_CODES_HELP)
def batch_status(
    context: typer.Context,
    batch_id: str,
    wait: Annotated[
        bool, typer.Option(help="Follow it to the end; exit 6 unless it completed.")
    ] = False,
) -> None:
    """Print the batch (JSON): status, request counts, output file ids."""
    with _exits(), _client(context) as client:
        batch = _wait(client, batch_id) if wait else client.batch(batch_id)
    typer.echo(batch.model_dump_json(indent=2, exclude_none=True))
    if wait:
        _ended(batch)


@batch_app.command("download", epilog=EXIT_CODES_HELP)
def batch_download(
    context: typer.Context,
    batch_id: str,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write it; stdout if left out.")
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="The error file (failed lines) instead.")
    ] = False,
) -> None:
    """Write the batch's output file (or error file): a JSON answer per line."""
    with _exits(), _client(context) as client:
        batch = client.batch(batch_id)
        file_id = batch.error_file_id if errors else batch.output_file_id
        if file_id is None:
            if batch.terminal and (errors or batch.status == "completed"):
                return  # nothing failed, or nothing to output: an empty file
            _fail(ExitCode.BATCH_NOT_DONE, f"batch {batch_id} is {batch.status}; no output yet")
        content = client.file_content(file_id)
    if output is None:
        sys.stdout.buffer.write(content)
    else:
        output.write_bytes(content)


@batch_app.command("cancel", epilog=EXIT_CODES_HELP)
def batch_cancel(context: typer.Context, batch_id: str) -> None:
    """Cancel a batch; the lines it finished stay in its output."""
    with _exits(), _client(context) as client:
        batch = client.cancel_batch(batch_id)
    typer.echo(batch.model_dump_json(indent=2, exclude_none=True))


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="Who holds the key (owns its files and batches).")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", "-s", help=f"One of {', '.join(SCOPES)}; repeat for several."),
    ] = None,
) -> None:
    """Make a key; print it once, and the config entry (its SHA-256) that admits it."""
    try:
        key, entry = new_key(name, scope or ["classify"])
    except ValidationError as error:
        _fail(ExitCode.USAGE, str(error))
    typer.echo(f"key (give it to {name}; it is not stored anywhere): {key}")
    typer.echo("config entry, under args.auth.api_keys:")
    typer.echo(yaml.safe_dump([entry.model_dump()], sort_keys=False), nl=False)


@keys_app.command("hash")
def keys_hash(
    key: Annotated[
        str | None,
        typer.Argument(help="The key; read from stdin if left out (keeps it out of history)."),
    ] = None,
) -> None:
    """Print the sha256 a config entry needs for KEY."""
    typer.echo(key_hash(key if key is not None else sys.stdin.readline().strip()))
