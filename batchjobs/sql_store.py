"""The job store on SQLite (one host, several processes) or PostgreSQL (several hosts).

One implementation over the sync DB-API drivers: each call runs in a worker thread and holds
the store's one connection for its duration, so a store needs no pool and its transactions
never interleave. Records are kept as pydantic JSON; the columns beside them are only what
queries filter, order or lock by.

A write transaction first locks what it changes, so concurrent writers (the ingress cancelling,
a runner checkpointing, in other processes) queue instead of overwriting each other: SQLite takes
the database's write lock at `BEGIN IMMEDIATE`, PostgreSQL the batch row with `FOR UPDATE`.

Leases and file expiry are judged by the database's clock, in the SQL itself: runners on hosts
whose clocks disagree still agree on whose lease has run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psycopg

from batchjobs.schemas import TERMINAL_STATUSES, BatchObject, ChunkRecord, FileRecord
from batchjobs.store import (
    RUNNING_STATUSES,
    BatchChange,
    Lease,
    LeaseLostError,
    StoreUnavailableError,
    WaitingBatch,
)

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 30.0
POSTGRES_CONNECT_TIMEOUT_S = 10
URL_FORMS = (
    "sqlite:////absolute/path.db, sqlite:///relative/path.db, a plain file path, "
    "postgresql://... or postgres://..."
)
# Our own constants, so inlining them cannot inject anything; sorted for a stable SQL text.
_TERMINAL_SQL = ", ".join(f"'{status}'" for status in sorted(TERMINAL_STATUSES))
# Any constant shared by every process using the database: serialises their schema creation.
_SCHEMA_LOCK_KEY = 0x6361_7073_6A6F_6273
# The first key of PostgreSQL's two-key advisory locks that serialise one tenant's claims.
_TENANT_LOCK_CLASS = 0x6361_7073
# How far back a tenant's last service counts when ordering waiting batches.
FAIR_SHARE_MEMORY_S = 3600.0

# One schema for both databases: SQLite maps BIGINT and DOUBLE PRECISION onto its INTEGER and
# REAL; PostgreSQL's REAL would be float4, too coarse for epoch seconds.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        purpose TEXT NOT NULL,
        tenant TEXT,
        expires_at BIGINT,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS files_by_time ON files (created_at, id)",
    "CREATE INDEX IF NOT EXISTS files_by_purpose ON files (purpose, created_at, id)",
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        tenant TEXT,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        lines INTEGER NOT NULL DEFAULT 0,
        served_at DOUBLE PRECISION,
        handled INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS batches_by_time ON batches (created_at, id)",
    "CREATE INDEX IF NOT EXISTS batches_by_input ON batches (input_file_id)",
    """CREATE TABLE IF NOT EXISTS batch_chunks (
        batch_id TEXT NOT NULL,
        chunk_index INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (batch_id, chunk_index)
    )""",
)
# Columns added after the first release, which `CREATE TABLE IF NOT EXISTS` does not add to the
# tables of an existing store: (table, column, type, where the record already holds its value).
_ADDED_COLUMNS = (
    ("files", "tenant", "TEXT", None),
    ("batches", "tenant", "TEXT", None),
    # `lines`: what the lease holder reserved of its tenant's quota; `served_at`: when a runner
    # last took, renewed or released the batch.
    ("batches", "lines", "INTEGER NOT NULL DEFAULT 0", None),
    ("batches", "served_at", "DOUBLE PRECISION", None),
    ("files", "expires_at", "BIGINT", ("file", "expires_at")),
)
# Made after the columns it indexes, which an older store gains only then.
_INDEXES = ("CREATE INDEX IF NOT EXISTS files_by_expiry ON files (expires_at)",)


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class _Connection(Protocol):
    def execute(self, query: str, params: Sequence[Any], /) -> _Cursor: ...

    def close(self) -> None: ...


_Sql = Callable[..., _Cursor]
"""Runs one statement written with `?` placeholders: `sql(query, *params)`."""


@dataclass(frozen=True)
class _Dialect:
    """What differs between the databases; the SQL is otherwise the same."""

    placeholder: str
    begin_write: str
    lock_row: str
    """Appended to the SELECT that reads the row a write transaction goes on to change."""
    begin_schema: tuple[str, ...]
    columns_of: str
    """A query of the column names of the table named by its one parameter."""
    lock_tenant: str | None
    """Serialises the claims of the tenant named by its one parameter, until the transaction
    ends; None where every write transaction is serialised anyway."""
    same: str
    """The comparison that is true of two NULLs too."""
    now: str
    """The database's clock in epoch seconds, as an SQL expression."""
    json_integer: Callable[[tuple[str, ...]], str]
    """The SQL of the integer at a path of the `record` column's JSON."""
    connect: Callable[[], _Connection]
    is_broken: Callable[[_Connection], bool]


def _sqlite(path: Path) -> _Dialect:
    def connect() -> _Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): the store says where transactions begin and end.
        connection = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        # WAL lets other processes read while one writes; FULL syncs each commit, so a
        # checkpoint survives the process being killed and the machine losing power.
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    return _Dialect(
        placeholder="?",
        begin_write="BEGIN IMMEDIATE",
        lock_row="",
        begin_schema=("BEGIN IMMEDIATE",),
        columns_of="SELECT name FROM pragma_table_info(?)",
        lock_tenant=None,
        same="IS",
        now="((julianday('now') - 2440587.5) * 86400.0)",
        json_integer=lambda path: f"json_extract(record, '$.{'.'.join(path)}')",
        connect=connect,
        is_broken=lambda _: False,
    )


def _postgres(url: str) -> _Dialect:
    def connect() -> _Connection:
        return psycopg.connect(url, autocommit=True, connect_timeout=POSTGRES_CONNECT_TIMEOUT_S)

    def is_broken(connection: _Connection) -> bool:
        assert isinstance(connection, psycopg.Connection)
        return connection.broken or connection.closed

    return _Dialect(
        placeholder="%s",
        begin_write="BEGIN",
        lock_row=" FOR UPDATE",
        # Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's catalogs.
        begin_schema=("BEGIN", f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})"),
        columns_of="SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ?",
        lock_tenant=(
            f"SELECT pg_advisory_xact_lock({_TENANT_LOCK_CLASS}, hashtext(COALESCE(?, '')))"
        ),
        same="IS NOT DISTINCT FROM",
        now="EXTRACT(EPOCH FROM clock_timestamp())::double precision",
        json_integer=lambda path: f"(record::jsonb #>> '{{{','.join(path)}}}')::bigint",
        connect=connect,
        is_broken=is_broken,
    )


def open_store(url: str) -> SqlJobStore:
    """Opens (creating its tables if need be) the store at `url`: `sqlite:////abs/path.db` or
    `sqlite:///relative/path.db` (SQLAlchemy's forms), a plain file path, or a PostgreSQL URL
    (`postgresql://user@host:port/db`, also `postgres://`)."""
    if url.startswith(("postgresql://", "postgres://")):
        return SqlJobStore(_postgres(url))
    if url.startswith("sqlite:///"):
        return SqlJobStore(_sqlite(Path(url.removeprefix("sqlite:///"))))
    if "://" in url or url.startswith("sqlite:"):
        raise ValueError(f"unsupported job store URL {url!r}; use one of: {URL_FORMS}")
    return SqlJobStore(_sqlite(Path(url)))


class SqlJobStore:
    """The `JobStore` over one connection to SQLite or PostgreSQL; see the module docstring."""

    def __init__(self, dialect: _Dialect) -> None:
        self._dialect = dialect
        self._lock = threading.Lock()
        connection = self._connect()
        self._connection: _Connection | None = connection
        try:
            with self._lock:
                self._transaction(dialect.begin_schema, self._create_schema)
        except BaseException:
            connection.close()
            raise

    async def create_file(self, record: FileRecord) -> None:
        await self._write(lambda sql: _insert_file(sql, record))

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None:
        owned, params = _owned_by(tenant)
        row = await self._read(
            lambda sql: sql(
                f"SELECT record FROM files WHERE id = ?{owned}", file_id, *params
            ).fetchone()
        )
        return None if row is None else FileRecord.model_validate_json(row[0])

    async def list_files(
        self,
        purpose: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
        tenant: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        _check_limit(limit)
        # Expired files are gone for callers, whether or not the cleanup has deleted them yet.
        clauses: list[str] = [f"(expires_at IS NULL OR expires_at > {self._dialect.now})"]
        params: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if purpose is not None:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after is not None:
            # No row for an unknown `after`: the comparison is NULL and the page empty.
            comparison = ">" if order == "asc" else "<"
            clauses.append(
                f"(created_at, id) {comparison} (SELECT created_at, id FROM files WHERE id = ?)"
            )
            params.append(after)
        direction = "ASC" if order == "asc" else "DESC"
        query = (
            f"SELECT record FROM files WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at {direction}, id {direction} LIMIT ?"
        )
        rows = await self._read(lambda sql: sql(query, *params, limit + 1).fetchall())
        return [FileRecord.model_validate_json(row[0]) for row in rows[:limit]], len(rows) > limit

    async def delete_file(self, file_id: str) -> bool:
        deleted = await self._write(
            lambda sql: sql("DELETE FROM files WHERE id = ?", file_id).rowcount
        )
        return deleted > 0

    async def expired_files(self, limit: int) -> list[FileRecord]:
        _check_limit(limit)
        rows = await self._read(
            lambda sql: sql(
                f"SELECT record FROM files WHERE expires_at <= {self._dialect.now} "
                "AND id NOT IN (SELECT input_file_id FROM batches "
                f"WHERE status NOT IN ({_TERMINAL_SQL})) "
                "ORDER BY expires_at, id LIMIT ?",
                limit,
            ).fetchall()
        )
        return [FileRecord.model_validate_json(row[0]) for row in rows]

    async def create_batch(self, batch: BatchObject, tenant: str | None = None) -> None:
        await self._write(
            lambda sql: sql(
                "INSERT INTO batches (id, created_at, status, input_file_id, tenant, record) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                batch.id,
                batch.created_at,
                batch.status,
                batch.input_file_id,
                tenant,
                batch.model_dump_json(),
            )
        )

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchObject | None:
        owned, params = _owned_by(tenant)
        row = await self._read(
            lambda sql: sql(
                f"SELECT record FROM batches WHERE id = ?{owned}", batch_id, *params
            ).fetchone()
        )
        return None if row is None else BatchObject.model_validate_json(row[0])

    async def list_batches(
        self, limit: int, after: str | None, tenant: str | None = None
    ) -> tuple[list[BatchObject], bool]:
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if after is not None:
            clauses.append("(created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?)")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT record FROM batches {where} ORDER BY created_at DESC, id DESC LIMIT ?"
        rows = await self._read(lambda sql: sql(query, *params, limit + 1).fetchall())
        return [BatchObject.model_validate_json(row[0]) for row in rows[:limit]], len(rows) > limit

    async def batches_using_file(self, file_id: str) -> list[BatchObject]:
        rows = await self._read(
            lambda sql: sql(
                "SELECT record FROM batches "
                f"WHERE input_file_id = ? AND status NOT IN ({_TERMINAL_SQL}) "
                "ORDER BY created_at, id",
                file_id,
            ).fetchall()
        )
        return [BatchObject.model_validate_json(row[0]) for row in rows]

    async def update_batch(
        self, batch_id: str, change: BatchChange, owner: str | None = None
    ) -> BatchObject | None:
        def update(sql: _Sql) -> BatchObject | None:
            batch = self._locked_batch(sql, batch_id, owner)
            if batch is None:
                return None
            changed = change(batch)
            if changed is None:
                return batch
            _store_batch(sql, batch_id, changed)
            return changed

        return await self._write(update)

    async def claim_batch(
        self,
        batch_id: str,
        owner: str,
        lease_s: float,
        lines: int = 1,
        tenant_lines: int | None = None,
    ) -> Lease | None:
        def claim(sql: _Sql) -> Lease | None:
            # The database's clock, read once with the locked row: the whole claim judges and
            # sets leases by that one instant.
            row = sql(
                f"SELECT tenant, status, owner, lease_until, lines, handled, {self._dialect.now} "
                f"FROM batches WHERE id = ?{self._dialect.lock_row}",
                batch_id,
            ).fetchone()
            if row is None:
                return None
            tenant, status, holder, lease_until, held_lines, handled, now = row
            if handled and status in TERMINAL_STATUSES:
                return None
            if holder is not None and lease_until >= now:
                if holder != owner:
                    return None
                sql(
                    "UPDATE batches SET lease_until = ?, served_at = ? WHERE id = ?",
                    now + lease_s,
                    now,
                    batch_id,
                )
                return Lease(batch_id, tenant, held_lines)
            granted = lines if status in RUNNING_STATUSES else 0
            if granted and tenant_lines is not None:
                granted = min(granted, tenant_lines - self._tenant_lines(sql, tenant, now))
                if granted < 1:
                    return None
            sql(
                "UPDATE batches SET owner = ?, lease_until = ?, lines = ?, served_at = ? "
                "WHERE id = ?",
                owner,
                now + lease_s,
                granted,
                now,
                batch_id,
            )
            return Lease(batch_id, tenant, granted)

        return await self._write(claim)

    def _tenant_lines(self, sql: _Sql, tenant: str | None, now: float) -> int:
        """The lines the tenant's live leases hold, its claims serialised from here to commit."""
        if self._dialect.lock_tenant is not None:
            sql(self._dialect.lock_tenant, tenant)
        row = sql(
            "SELECT COALESCE(SUM(lines), 0) FROM batches "
            f"WHERE tenant {self._dialect.same} ? AND owner IS NOT NULL AND lease_until >= ?",
            tenant,
            now,
        ).fetchone()
        return int(row[0])

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._write(
            lambda sql: sql(
                "UPDATE batches SET owner = NULL, lease_until = NULL, lines = 0, "
                f"served_at = {self._dialect.now} WHERE id = ? AND owner = ?",
                batch_id,
                owner,
            )
        )

    async def claimable_batches(self, tenant_lines: int | None = None) -> list[WaitingBatch]:
        now = self._dialect.now

        def read(sql: _Sql) -> tuple[list[Any], list[Any]]:
            waiting = sql(
                "SELECT id, tenant, status FROM batches "
                f"WHERE (status NOT IN ({_TERMINAL_SQL}) OR handled = 0) "
                f"AND (owner IS NULL OR lease_until < {now}) "
                "ORDER BY created_at, id"
            ).fetchall()
            tenants = sql(
                "SELECT tenant, "
                f"SUM(CASE WHEN owner IS NOT NULL AND lease_until >= {now} THEN lines ELSE 0 END), "
                f"MAX(served_at) FROM batches WHERE served_at >= {now} - ? GROUP BY tenant",
                FAIR_SHARE_MEMORY_S,
            ).fetchall()
            return waiting, tenants

        waiting, tenants = await self._read(read)
        in_flight = {tenant: int(lines) for tenant, lines, _ in tenants}
        served_at = {tenant: float(at) for tenant, _, at in tenants}
        batches = [
            WaitingBatch(
                id=batch_id,
                tenant=tenant,
                runs_lines=status in RUNNING_STATUSES,
                tenant_lines=in_flight.get(tenant, 0),
            )
            for batch_id, tenant, status in waiting
        ]
        if tenant_lines is not None:
            batches = [b for b in batches if not b.runs_lines or b.tenant_lines < tenant_lines]
        # A stable sort: equals keep the oldest-first order of the query.
        return sorted(
            batches,
            key=lambda b: (b.runs_lines, b.tenant_lines, served_at.get(b.tenant, -math.inf)),
        )

    async def mark_handled(self, batch_id: str, owner: str) -> None:
        # The handlers ran whoever holds the lease now; only the lease is `owner`'s to release.
        # (Every SET expression reads the row as it was before the UPDATE.)
        await self._write(
            lambda sql: sql(
                "UPDATE batches SET handled = 1, "
                "owner = CASE WHEN owner = ? THEN NULL ELSE owner END, "
                "lease_until = CASE WHEN owner = ? THEN NULL ELSE lease_until END, "
                "lines = CASE WHEN owner = ? THEN 0 ELSE lines END "
                "WHERE id = ?",
                owner,
                owner,
                owner,
                batch_id,
            )
        )

    async def add_chunk(
        self, batch_id: str, owner: str, chunk: ChunkRecord, change: BatchChange
    ) -> None:
        def add(sql: _Sql) -> None:
            batch = self._locked_batch(sql, batch_id, owner)
            if batch is None:
                raise LeaseLostError(f"batch {batch_id} no longer exists")
            inserted = sql(
                "INSERT INTO batch_chunks (batch_id, chunk_index, record) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                batch_id,
                chunk.index,
                chunk.model_dump_json(),
            )
            if inserted.rowcount == 0:
                # Only another runner, which held the lease before us, can have stored it.
                raise LeaseLostError(f"chunk {chunk.index} of batch {batch_id} is already stored")
            changed = change(batch)
            if changed is not None:
                _store_batch(sql, batch_id, changed)

        await self._write(add)

    async def finish_batch(
        self, batch_id: str, owner: str, files: Sequence[FileRecord], change: BatchChange
    ) -> BatchObject:
        def finish(sql: _Sql) -> BatchObject:
            batch = self._locked_batch(sql, batch_id, owner)
            if batch is None:
                raise LeaseLostError(f"batch {batch_id} no longer exists")
            changed = change(batch)
            if changed is None:
                return batch
            for record in files:
                _insert_file(sql, record, " ON CONFLICT DO NOTHING")
            _store_batch(sql, batch_id, changed)
            return changed

        return await self._write(finish)

    async def chunks(self, batch_id: str) -> list[ChunkRecord]:
        rows = await self._read(
            lambda sql: sql(
                "SELECT record FROM batch_chunks WHERE batch_id = ? ORDER BY chunk_index",
                batch_id,
            ).fetchall()
        )
        return [ChunkRecord.model_validate_json(row[0]) for row in rows]

    async def close(self) -> None:
        def close() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        await asyncio.to_thread(close)

    def _locked_batch(self, sql: _Sql, batch_id: str, owner: str | None) -> BatchObject | None:
        """Reads the batch for a write, locking its row; checks `owner`'s lease when given."""
        row = sql(
            "SELECT record, owner, "
            f"CASE WHEN lease_until >= {self._dialect.now} THEN 0 ELSE 1 END "
            f"FROM batches WHERE id = ?{self._dialect.lock_row}",
            batch_id,
        ).fetchone()
        if row is None:
            return None
        record, holder, lapsed = row
        if owner is not None and (holder != owner or lapsed):
            raise LeaseLostError(f"{owner} no longer holds the lease on batch {batch_id}")
        return BatchObject.model_validate_json(record)

    def _create_schema(self, sql: _Sql) -> None:
        for statement in _SCHEMA:
            sql(statement)
        for table, column, kind, in_record in _ADDED_COLUMNS:
            present = {row[0] for row in sql(self._dialect.columns_of, table).fetchall()}
            if column not in present:
                sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if in_record is not None:
                    sql(f"UPDATE {table} SET {column} = {self._dialect.json_integer(in_record)}")
        for statement in _INDEXES:
            sql(statement)

    async def _read(self, work: Callable[[_Sql], T]) -> T:
        def read() -> T:
            with self._lock, _server_errors_as_unavailable():
                return self._retrying(lambda: work(self._sql()))

        return await asyncio.to_thread(read)

    async def _write(self, work: Callable[[_Sql], T]) -> T:
        def write() -> T:
            with self._lock, _server_errors_as_unavailable():
                return self._transaction((self._dialect.begin_write,), work)

        return await asyncio.to_thread(write)

    def _transaction(self, begin: Sequence[str], work: Callable[[_Sql], T]) -> T:
        """Runs `work` in a transaction that `begin` opens; the caller holds the lock."""

        def start() -> None:
            for statement in begin:
                self._sql()(statement)

        self._retrying(start)
        sql = self._sql()
        try:
            result = work(sql)
            sql("COMMIT")
        except BaseException:
            # The transaction may already be gone (a broken connection, or SQLite rolled it
            # back itself); the error that ended it is the one to raise.
            with contextlib.suppress(Exception):
                sql("ROLLBACK")
            raise
        return result

    def _retrying(self, step: Callable[[], T]) -> T:
        """Runs `step`, again on a new connection if the connection turned out to be broken (a
        restarted server, an idle connection cut). Only for steps that change nothing: a write
        that broke off may have committed, so only its BEGIN goes through here."""
        try:
            return step()
        except Exception:
            if self._connection is None or not self._dialect.is_broken(self._connection):
                raise
        self._connection.close()
        self._connection = self._connect()
        return step()

    def _connect(self) -> _Connection:
        try:
            return self._dialect.connect()
        except (psycopg.OperationalError, sqlite3.OperationalError, OSError) as error:
            raise StoreUnavailableError(
                f"the job store's database cannot be reached ({type(error).__name__})"
            ) from error

    def _sql(self) -> _Sql:
        if self._connection is None:
            raise RuntimeError("the job store is closed")
        connection, placeholder = self._connection, self._dialect.placeholder

        def sql(query: str, *params: Any) -> _Cursor:
            return connection.execute(query.replace("?", placeholder), params)

        return sql


@contextlib.contextmanager
def _server_errors_as_unavailable() -> Iterator[None]:
    """PostgreSQL's operational errors (the server went away, shut down, or cancelled the
    statement) pass: callers see them as the store being unavailable for now."""
    try:
        yield
    except psycopg.OperationalError as error:
        raise StoreUnavailableError(
            f"the job store's database failed ({type(error).__name__})"
        ) from error


def _insert_file(sql: _Sql, record: FileRecord, on_conflict: str = "") -> None:
    file = record.file
    sql(
        "INSERT INTO files (id, created_at, purpose, tenant, expires_at, record) "
        f"VALUES (?, ?, ?, ?, ?, ?){on_conflict}",
        file.id,
        file.created_at,
        file.purpose,
        record.tenant,
        file.expires_at,
        record.model_dump_json(),
    )


def _store_batch(sql: _Sql, batch_id: str, batch: BatchObject) -> None:
    sql(
        "UPDATE batches SET status = ?, record = ? WHERE id = ?",
        batch.status,
        batch.model_dump_json(),
        batch_id,
    )


def _owned_by(tenant: str | None) -> tuple[str, tuple[str, ...]]:
    """The condition limiting a query to `tenant`'s rows (none for None), and its parameters."""
    return ("", ()) if tenant is None else (" AND tenant = ?", (tenant,))


def _check_limit(limit: int) -> None:
    # With no room for even one item a page could say that more follow while showing none.
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
