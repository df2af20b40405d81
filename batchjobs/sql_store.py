"""The job store on SQLite (one host, several processes) or PostgreSQL (several hosts).

One implementation in SQLAlchemy Core on its asyncio engine (aiosqlite, psycopg): the tables are
declared once below and every statement is built from them, so values always travel as bound
parameters whatever the dialect. Records are kept as pydantic JSON; the columns beside them are
only what queries filter, order or lock by.

A write transaction first locks what it changes, so concurrent writers (the ingress cancelling,
a runner checkpointing, in other processes) queue instead of overwriting each other: SQLite takes
the database's write lock at `BEGIN IMMEDIATE`, PostgreSQL the batch row with `FOR UPDATE`.

Leases and file expiry are judged by the database's clock, in the SQL itself: runners on hosts
whose clocks disagree still agree on whose lease has run out.

A connection the server dropped (a restart, an idle connection cut) is replaced when next taken
from the pool (`pool_pre_ping`); a transaction it broke off fails as StoreUnavailableError, never
retried, since it may have committed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from batchjobs.schemas import TERMINAL_STATUSES, BatchObject, ChunkRecord, FileRecord
from batchjobs.store import (
    RUNNING_STATUSES,
    BatchChange,
    Lease,
    LeaseLostError,
    StoreUnavailableError,
    WaitingBatch,
)

SQLITE_BUSY_TIMEOUT_S = 30.0
POSTGRES_CONNECT_TIMEOUT_S = 10
# Connections a store holds to PostgreSQL: reads of the ingress's concurrent requests run side by
# side. SQLite takes one writer at a time anyway, so a SQLite store holds one connection.
POSTGRES_POOL_SIZE = 4
URL_FORMS = (
    "sqlite:////absolute/path.db, sqlite:///relative/path.db, a plain file path, "
    "postgresql://... or postgres://..."
)
# Any constant shared by every process using the database: serialises their schema creation.
_SCHEMA_LOCK_KEY = 0x6361_7073_6A6F_6273
# The first key of PostgreSQL's two-key advisory locks that serialise one tenant's claims.
_TENANT_LOCK_CLASS = 0x6361_7073
# How far back a tenant's last service counts when ordering waiting batches.
FAIR_SHARE_MEMORY_S = 3600.0
# The execution option of a connection that writes: SQLite begins its transactions IMMEDIATE.
_WRITES = "capserve_writes"

# DOUBLE PRECISION, not REAL: PostgreSQL's REAL is float4, too coarse for epoch seconds.
metadata = sa.MetaData()
file_table = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("record", sa.Text, nullable=False),
    sa.Index("files_by_time", "created_at", "id"),
    sa.Index("files_by_purpose", "purpose", "created_at", "id"),
    sa.Index("files_by_expiry", "expires_at"),
)
batch_table = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("input_file_id", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text),
    sa.Column("owner", sa.Text),
    sa.Column("lease_until", sa.Double),
    # What the lease holder reserved of its tenant's quota.
    sa.Column("lines", sa.Integer, nullable=False, server_default=sa.text("0")),
    # When a runner last took, renewed or released the batch.
    sa.Column("served_at", sa.Double),
    sa.Column("handled", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("record", sa.Text, nullable=False),
    sa.Index("batches_by_time", "created_at", "id"),
    sa.Index("batches_by_input", "input_file_id"),
)
chunk_table = sa.Table(
    "batch_chunks",
    metadata,
    sa.Column("batch_id", sa.Text, primary_key=True),
    sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("record", sa.Text, nullable=False),
)
# Columns added after the first release, which creating the missing tables does not add to the
# tables of an existing store: (column, where the record already holds its value).
_ADDED_COLUMNS: tuple[tuple[sa.Column[Any], tuple[str, ...] | None], ...] = (
    (file_table.c.tenant, None),
    (batch_table.c.tenant, None),
    (batch_table.c.lines, None),
    (batch_table.c.served_at, None),
    (file_table.c.expires_at, ("file", "expires_at")),
)
_TERMINAL = sorted(TERMINAL_STATUSES)


class DatabaseClock(sa.sql.functions.FunctionElement[float]):
    """The database's clock in epoch seconds, read where the statement runs."""

    type = sa.Double()
    inherit_cache = True


@compiles(DatabaseClock, "sqlite")
def _sqlite_clock(element: DatabaseClock, compiler: SQLCompiler, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(DatabaseClock, "postgresql")
def _postgres_clock(element: DatabaseClock, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXTRACT(EPOCH FROM clock_timestamp())::double precision"


async def open_store(url: str) -> SqlJobStore:
    """Opens (creating or upgrading its tables if need be) the store at `url`:
    `sqlite:////abs/path.db` or `sqlite:///relative/path.db` (SQLAlchemy's forms), a plain file
    path, or a PostgreSQL URL (`postgresql://user@host:port/db`, also `postgres://`)."""
    if url.startswith(("postgresql://", "postgres://")):
        engine = _postgres_engine(url)
    elif url.startswith("sqlite:///"):
        engine = _sqlite_engine(Path(url.removeprefix("sqlite:///")))
    elif "://" in url or url.startswith("sqlite:"):
        raise ValueError(f"unsupported job store URL {url!r}; use one of: {URL_FORMS}")
    else:
        engine = _sqlite_engine(Path(url))
    store = SqlJobStore(engine)
    try:
        await store.create_schema()
    except BaseException:
        await engine.dispose()
        raise
    return store


def _postgres_engine(url: str) -> AsyncEngine:
    address = sa.make_url("postgresql+psycopg://" + url.split("://", 1)[1])
    return create_async_engine(
        address,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
        pool_size=POSTGRES_POOL_SIZE,
        max_overflow=0,
        pool_pre_ping=True,
    )


def _sqlite_engine(path: Path) -> AsyncEngine:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unavailable(error) from error
    engine = create_async_engine(
        sa.URL.create("sqlite+aiosqlite", database=str(path)),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=1,
        max_overflow=0,
    )

    @sa.event.listens_for(engine.sync_engine, "connect")
    def configure(dbapi_connection: Any, _: Any) -> None:
        # The driver would begin transactions only before DML, and never IMMEDIATE: `begin`
        # below does it instead (SQLAlchemy's recipe for SQLite transactions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets other processes read while one writes; FULL syncs each commit, so a
        # checkpoint survives the process being killed and the machine losing power.
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def begin(connection: sa.Connection) -> None:
        writes = connection.get_execution_options().get(_WRITES, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


class SqlJobStore:
    """The `JobStore` on SQLite or PostgreSQL; see the module docstring."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITES: True})
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert
        self._closed = False

    async def create_schema(self) -> None:
        """Creates the missing tables, columns and indexes; what exists stays as it is."""
        async with self._write() as connection:
            if self._postgres:
                # Concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL's catalogs.
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY}
                )
            await connection.run_sync(self._create_schema)

    def _create_schema(self, connection: sa.Connection) -> None:
        metadata.create_all(connection)
        inspector = sa.inspect(connection)
        for column, in_record in _ADDED_COLUMNS:
            table = column.table
            if column.name in {known["name"] for known in inspector.get_columns(table.name)}:
                continue
            spec = sa.schema.CreateColumn(column).compile(dialect=connection.dialect)
            connection.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {spec}"))
            if in_record is not None:
                connection.execute(
                    sa.update(table).values({column: self._json_integer(table.c.record, in_record)})
                )
        # Made after the columns they index, which an older store gains only then.
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(connection, checkfirst=True)

    def _json_integer(self, record: sa.Column[Any], path: tuple[str, ...]) -> sa.ColumnElement[int]:
        """The integer at `path` in the JSON of the `record` column."""
        document = (
            sa.cast(record, postgresql.JSONB) if self._postgres else sa.type_coerce(record, sa.JSON)
        )
        return sa.cast(document[path].as_string(), sa.BigInteger)

    async def create_file(self, record: FileRecord) -> None:
        async with self._write() as connection:
            await connection.execute(sa.insert(file_table).values(_file_row(record)))

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None:
        query = sa.select(file_table.c.record).where(
            file_table.c.id == file_id, *_owned_by(file_table, tenant)
        )
        async with self._read() as connection:
            record = await connection.scalar(query)
        return None if record is None else FileRecord.model_validate_json(record)

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
        query = sa.select(file_table.c.record).where(
            sa.or_(file_table.c.expires_at.is_(None), file_table.c.expires_at > DatabaseClock()),
            *_owned_by(file_table, tenant),
        )
        if purpose is not None:
            query = query.where(file_table.c.purpose == purpose)
        position = sa.tuple_(file_table.c.created_at, file_table.c.id)
        if after is not None:
            # No row for an unknown `after`: the comparison is NULL and the page empty.
            mark = _position_of(file_table, after)
            query = query.where(position > mark if order == "asc" else position < mark)
        direction = sa.asc if order == "asc" else sa.desc
        query = query.order_by(direction(file_table.c.created_at), direction(file_table.c.id))
        rows = await self._records(query.limit(limit + 1))
        return [FileRecord.model_validate_json(row) for row in rows[:limit]], len(rows) > limit

    async def delete_file(self, file_id: str) -> bool:
        async with self._write() as connection:
            deleted = await connection.execute(
                sa.delete(file_table).where(file_table.c.id == file_id)
            )
        return deleted.rowcount > 0

    async def expired_files(self, limit: int) -> list[FileRecord]:
        _check_limit(limit)
        inputs_in_use = sa.select(batch_table.c.input_file_id).where(
            batch_table.c.status.not_in(_TERMINAL)
        )
        query = (
            sa.select(file_table.c.record)
            .where(
                file_table.c.expires_at <= DatabaseClock(), file_table.c.id.not_in(inputs_in_use)
            )
            .order_by(file_table.c.expires_at, file_table.c.id)
            .limit(limit)
        )
        return [FileRecord.model_validate_json(row) for row in await self._records(query)]

    async def create_batch(self, batch: BatchObject, tenant: str | None = None) -> None:
        async with self._write() as connection:
            await connection.execute(
                sa.insert(batch_table).values(
                    id=batch.id,
                    created_at=batch.created_at,
                    status=batch.status,
                    input_file_id=batch.input_file_id,
                    tenant=tenant,
                    record=batch.model_dump_json(),
                )
            )

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchObject | None:
        query = sa.select(batch_table.c.record).where(
            batch_table.c.id == batch_id, *_owned_by(batch_table, tenant)
        )
        async with self._read() as connection:
            record = await connection.scalar(query)
        return None if record is None else BatchObject.model_validate_json(record)

    async def list_batches(
        self, limit: int, after: str | None, tenant: str | None = None
    ) -> tuple[list[BatchObject], bool]:
        _check_limit(limit)
        query = sa.select(batch_table.c.record).where(*_owned_by(batch_table, tenant))
        if after is not None:
            position = sa.tuple_(batch_table.c.created_at, batch_table.c.id)
            query = query.where(position < _position_of(batch_table, after))
        query = query.order_by(batch_table.c.created_at.desc(), batch_table.c.id.desc())
        rows = await self._records(query.limit(limit + 1))
        return [BatchObject.model_validate_json(row) for row in rows[:limit]], len(rows) > limit

    async def batches_using_file(self, file_id: str) -> list[BatchObject]:
        query = (
            sa.select(batch_table.c.record)
            .where(batch_table.c.input_file_id == file_id, batch_table.c.status.not_in(_TERMINAL))
            .order_by(batch_table.c.created_at, batch_table.c.id)
        )
        return [BatchObject.model_validate_json(row) for row in await self._records(query)]

    async def update_batch(
        self, batch_id: str, change: BatchChange, owner: str | None = None
    ) -> BatchObject | None:
        async with self._write() as connection:
            batch = await _locked_batch(connection, batch_id, owner)
            if batch is None:
                return None
            changed = change(batch)
            if changed is None:
                return batch
            await _store_batch(connection, batch_id, changed)
            return changed

    async def claim_batch(
        self,
        batch_id: str,
        owner: str,
        lease_s: float,
        lines: int = 1,
        tenant_lines: int | None = None,
    ) -> Lease | None:
        held = batch_table.c
        async with self._write() as connection:
            # The database's clock, read once with the locked row: the whole claim judges and
            # sets leases by that one instant.
            row = (
                await connection.execute(
                    sa.select(
                        held.tenant,
                        held.status,
                        held.owner,
                        held.lease_until,
                        held.lines,
                        held.handled,
                        DatabaseClock(),
                    )
                    .where(held.id == batch_id)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                return None
            tenant, status, holder, lease_until, held_lines, handled, now = row
            if handled and status in TERMINAL_STATUSES:
                return None
            this_batch = sa.update(batch_table).where(held.id == batch_id)
            if holder is not None and lease_until >= now:
                if holder != owner:
                    return None
                await connection.execute(
                    this_batch.values(lease_until=now + lease_s, served_at=now)
                )
                return Lease(batch_id, tenant, held_lines)
            granted = lines if status in RUNNING_STATUSES else 0
            if granted and tenant_lines is not None:
                in_flight = await self._tenant_lines(connection, tenant, now)
                granted = min(granted, tenant_lines - in_flight)
                if granted < 1:
                    return None
            await connection.execute(
                this_batch.values(
                    owner=owner, lease_until=now + lease_s, lines=granted, served_at=now
                )
            )
            return Lease(batch_id, tenant, granted)

    async def _tenant_lines(
        self, connection: AsyncConnection, tenant: str | None, now: float
    ) -> int:
        """The lines the tenant's live leases hold, its claims serialised from here to commit
        (on SQLite every write transaction is serialised already)."""
        if self._postgres:
            await connection.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock("
                    "CAST(:lock_class AS integer), hashtext(COALESCE(:tenant, '')))"
                ),
                {"lock_class": _TENANT_LOCK_CLASS, "tenant": tenant},
            )
        in_flight = await connection.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(batch_table.c.lines), 0)).where(
                batch_table.c.tenant.is_not_distinct_from(tenant),
                batch_table.c.owner.is_not(None),
                batch_table.c.lease_until >= now,
            )
        )
        return int(in_flight or 0)

    async def release_batch(self, batch_id: str, owner: str) -> None:
        async with self._write() as connection:
            await connection.execute(
                sa.update(batch_table)
                .where(batch_table.c.id == batch_id, batch_table.c.owner == owner)
                .values(owner=None, lease_until=None, lines=0, served_at=DatabaseClock())
            )

    async def claimable_batches(self, tenant_lines: int | None = None) -> list[WaitingBatch]:
        now, held = DatabaseClock(), batch_table.c
        live = sa.and_(held.owner.is_not(None), held.lease_until >= now)
        waiting_query = (
            sa.select(held.id, held.tenant, held.status)
            .where(
                sa.or_(held.status.not_in(_TERMINAL), held.handled == 0),
                sa.or_(held.owner.is_(None), held.lease_until < now),
            )
            .order_by(held.created_at, held.id)
        )
        tenants_query = (
            sa.select(
                held.tenant,
                sa.func.sum(sa.case((live, held.lines), else_=0)),
                sa.func.max(held.served_at),
            )
            .where(held.served_at >= now - FAIR_SHARE_MEMORY_S)
            .group_by(held.tenant)
        )
        async with self._read() as connection:
            waiting = (await connection.execute(waiting_query)).all()
            tenants = (await connection.execute(tenants_query)).all()
        in_flight = {tenant: int(lines) for tenant, lines, _ in tenants}
        served_at = {tenant: float(at) for tenant, _, at in tenants}
        claimable = [
            WaitingBatch(
                id=batch_id,
                tenant=tenant,
                runs_lines=status in RUNNING_STATUSES,
                tenant_lines=in_flight.get(tenant, 0),
            )
            for batch_id, tenant, status in waiting
        ]
        if tenant_lines is not None:
            claimable = [b for b in claimable if not b.runs_lines or b.tenant_lines < tenant_lines]
        # A stable sort: equals keep the oldest-first order of the query.
        return sorted(
            claimable,
            key=lambda b: (b.runs_lines, b.tenant_lines, served_at.get(b.tenant, -math.inf)),
        )

    async def mark_handled(self, batch_id: str, owner: str) -> None:
        # The handlers ran whoever holds the lease now; only the lease is `owner`'s to release.
        # (Every SET expression reads the row as it was before the UPDATE.)
        held = batch_table.c
        owns = held.owner == owner
        async with self._write() as connection:
            await connection.execute(
                sa.update(batch_table)
                .where(held.id == batch_id)
                .values(
                    handled=1,
                    owner=sa.case((owns, sa.null()), else_=held.owner),
                    lease_until=sa.case((owns, sa.null()), else_=held.lease_until),
                    lines=sa.case((owns, 0), else_=held.lines),
                )
            )

    async def add_chunk(
        self, batch_id: str, owner: str, chunk: ChunkRecord, change: BatchChange
    ) -> None:
        async with self._write() as connection:
            batch = await _locked_batch(connection, batch_id, owner)
            if batch is None:
                raise LeaseLostError(f"batch {batch_id} no longer exists")
            inserted = await connection.execute(
                self._insert(chunk_table)
                .values(batch_id=batch_id, chunk_index=chunk.index, record=chunk.model_dump_json())
                .on_conflict_do_nothing()
                # SQLAlchemy keeps the rowcount of UPDATE and DELETE only, unless asked.
                .execution_options(preserve_rowcount=True)
            )
            if inserted.rowcount == 0:
                # Only another runner, which held the lease before us, can have stored it.
                raise LeaseLostError(f"chunk {chunk.index} of batch {batch_id} is already stored")
            changed = change(batch)
            if changed is not None:
                await _store_batch(connection, batch_id, changed)

    async def finish_batch(
        self, batch_id: str, owner: str, files: Sequence[FileRecord], change: BatchChange
    ) -> BatchObject:
        async with self._write() as connection:
            batch = await _locked_batch(connection, batch_id, owner)
            if batch is None:
                raise LeaseLostError(f"batch {batch_id} no longer exists")
            changed = change(batch)
            if changed is None:
                return batch
            for record in files:
                await connection.execute(
                    self._insert(file_table).values(_file_row(record)).on_conflict_do_nothing()
                )
            await _store_batch(connection, batch_id, changed)
            return changed

    async def chunks(self, batch_id: str) -> list[ChunkRecord]:
        query = (
            sa.select(chunk_table.c.record)
            .where(chunk_table.c.batch_id == batch_id)
            .order_by(chunk_table.c.chunk_index)
        )
        return [ChunkRecord.model_validate_json(row) for row in await self._records(query)]

    async def close(self) -> None:
        self._closed = True
        await self._engine.dispose()

    async def _records(self, query: sa.Select[tuple[str]]) -> list[str]:
        async with self._read() as connection:
            return list(await connection.scalars(query))

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._unavailable_on_failure(), self._engine.connect() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed when the block ends and rolled back when it raises."""
        async with self._unavailable_on_failure(), self._writer.begin() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _unavailable_on_failure(self) -> AsyncIterator[None]:
        """The database failing (unreachable, gone away, cancelling the statement, locked past
        the busy timeout, or no connection free in time) is the store being unavailable for now;
        callers say so and when to retry."""
        if self._closed:
            raise RuntimeError("the job store is closed")
        try:
            yield
        except sa.exc.OperationalError as error:
            # SQLite's generic error is a mistake in the SQL, not an outage.
            if getattr(error.orig, "sqlite_errorname", None) == "SQLITE_ERROR":
                raise
            raise _unavailable(error) from error
        except sa.exc.TimeoutError as error:
            raise _unavailable(error) from error


async def _locked_batch(
    connection: AsyncConnection, batch_id: str, owner: str | None
) -> BatchObject | None:
    """Reads the batch for a write, locking its row; checks `owner`'s lease when given."""
    row = (
        await connection.execute(
            sa.select(
                batch_table.c.record,
                batch_table.c.owner,
                sa.case((batch_table.c.lease_until >= DatabaseClock(), False), else_=True),
            )
            .where(batch_table.c.id == batch_id)
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        return None
    record, holder, lapsed = row
    if owner is not None and (holder != owner or lapsed):
        raise LeaseLostError(f"{owner} no longer holds the lease on batch {batch_id}")
    return BatchObject.model_validate_json(record)


async def _store_batch(connection: AsyncConnection, batch_id: str, batch: BatchObject) -> None:
    await connection.execute(
        sa.update(batch_table)
        .where(batch_table.c.id == batch_id)
        .values(status=batch.status, record=batch.model_dump_json())
    )


def _file_row(record: FileRecord) -> dict[str, Any]:
    file = record.file
    return {
        "id": file.id,
        "created_at": file.created_at,
        "purpose": file.purpose,
        "tenant": record.tenant,
        "expires_at": file.expires_at,
        "record": record.model_dump_json(),
    }


def _owned_by(table: sa.Table, tenant: str | None) -> tuple[sa.ColumnElement[bool], ...]:
    """The condition limiting a query to `tenant`'s rows (none for None)."""
    return () if tenant is None else (table.c.tenant == tenant,)


def _position_of(table: sa.Table, row_id: str) -> sa.ScalarSelect[Any]:
    """Where the row `row_id` sits in the (created_at, id) order."""
    # Not correlated: it reads the table on its own, not the row of the query it sits in.
    mark = sa.select(table.c.created_at, table.c.id).where(table.c.id == row_id)
    return mark.correlate(None).scalar_subquery()


def _unavailable(error: Exception) -> StoreUnavailableError:
    # The driver's error that SQLAlchemy wrapped names what failed.
    cause = getattr(error, "orig", None) or error
    return StoreUnavailableError(f"the job store's database failed ({type(cause).__name__})")


def _check_limit(limit: int) -> None:
    # With no room for even one item a page could say that more follow while showing none.
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
