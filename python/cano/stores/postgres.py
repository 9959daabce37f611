"""``PostgresCheckpointStore``: checkpoint logs, run records and a queue of runs on PostgreSQL,
served to Workers on any number of machines.

Install with ``pip install 'cano[postgres]'`` (psycopg 3 and psycopg-pool). Not imported by
``import cano``.

- **Group commit.** Appends made while a commit is in flight wait for it and then go
  together, as **one** ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`` (plus one
  for rows written under a lease): a duplicate key refuses only its own row (a psycopg
  pipeline of INSERTs would be one transaction, which one duplicate aborts).
- **Leases on the database's clock.** Claims take due PENDING runs and RUNNING runs whose
  lease expired with ``FOR UPDATE SKIP LOCKED``; renewals are one statement per worker;
  every write of a run held under a lease joins its ``runs`` row ``FOR SHARE`` on owner and
  epoch, so a worker that lost its lease writes nothing (:class:`cano.LeaseLostError`), and
  an append in flight makes a concurrent claim skip the run.
- **Queue caps** lock the queue's row for the claim (only that queue's claimers wait).
- **Waking workers.** ``enqueue`` sends ``NOTIFY cano_wake`` (never a checkpoint: a
  committing NOTIFY takes a global lock); Workers also poll, so nothing depends on it.
- **A database restart** drops connections: the pool opens new ones, and a statement that
  failed because its connection broke is tried again (an append whose commit may have
  landed counts as done when the stored row is the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson

from cano._cancel import stop_if_cancelled
from cano._leases import renewal_outcome
from cano.errors import CheckpointError, ConfigurationError, LeaseLostError
from cano.records import (
    FENCE,
    Claim,
    Record,
    RunEnd,
    RunInfo,
    RunStatus,
    StepInfo,
    build_steps,
)
from cano.store import (
    CheckpointRow,
    RowFields,
    RowKind,
    RunSummary,
    check_workflow_id,
    conflict_message,
    row_fields,
)

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import AsyncConnectionPool
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        "cano.stores.postgres needs psycopg 3 and psycopg-pool: pip install 'cano[postgres]'"
    ) from e

__all__ = ["PostgresCheckpointStore"]

SCHEMA_VERSION = 1
"""The layout this build creates; a store at a later version is refused."""

_T = TypeVar("_T")

# How long a statement keeps being tried while the server is unreachable (a restart).
_RECONNECT_FOR = 30.0

_DDL = """
CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.checkpoints (
    workflow_id text NOT NULL, sequence bigint NOT NULL, state text NOT NULL,
    task_id text NOT NULL, kind smallint NOT NULL, output bytea,
    workflow_version bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, sequence));
CREATE TABLE IF NOT EXISTS {s}.steps (
    workflow_id text NOT NULL, sequence bigint NOT NULL, state text NOT NULL,
    task_id text NOT NULL, kind smallint NOT NULL, output bytea,
    workflow_version bigint NOT NULL, at timestamptz,
    PRIMARY KEY (workflow_id, sequence));
CREATE TABLE IF NOT EXISTS {s}.runs (
    workflow_id text PRIMARY KEY, workflow_name text, workflow_version bigint NOT NULL DEFAULT 0,
    status text NOT NULL, state text, final_state text, error text, error_type text,
    input bytea, queue text, owner text, attempts int NOT NULL DEFAULT 0, initial text,
    priority int NOT NULL DEFAULT 0, not_before timestamptz, lease_until timestamptz,
    lease_epoch bigint NOT NULL DEFAULT 0, cancel_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz,
    waiting_for text, wake_at timestamptz);
CREATE INDEX IF NOT EXISTS runs_waking ON {s}.runs (not_before) WHERE status = 'WAITING';
CREATE INDEX IF NOT EXISTS runs_pending ON {s}.runs (priority, created_at)
    WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS runs_leased ON {s}.runs (lease_until)
    WHERE status = 'RUNNING' AND owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_created ON {s}.runs (created_at);
CREATE TABLE IF NOT EXISTS {s}.queues (name text PRIMARY KEY, concurrency int);
CREATE TABLE IF NOT EXISTS {s}.signals (
    id bigserial PRIMARY KEY, workflow_id text NOT NULL, name text NOT NULL, payload bytea,
    dedup_key text, consumed_by text, sent_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (workflow_id, name, dedup_key));
CREATE INDEX IF NOT EXISTS signals_waiting ON {s}.signals (workflow_id, name, id)
    WHERE consumed_by IS NULL;
"""

_RECORD_COLUMNS = (
    "r.workflow_id, r.workflow_name, r.workflow_version, r.status, r.state, r.final_state, "
    "r.error, r.error_type, r.input, r.queue, r.owner, r.attempts, "
    "extract(epoch FROM r.created_at)::float8, extract(epoch FROM r.updated_at)::float8, "
    "extract(epoch FROM r.finished_at)::float8, r.waiting_for, "
    "extract(epoch FROM r.wake_at)::float8"
)
# The last row of a run still in flight: its current state.
_LAST_ROW = (
    "LEFT JOIN LATERAL (SELECT c.state AS last_state, extract(epoch FROM c.at)::float8 AS "
    "last_at FROM {s}.checkpoints c WHERE c.workflow_id = r.workflow_id AND r.status NOT IN "
    "('COMPLETED', 'FAILED', 'CANCELLED') ORDER BY c.sequence DESC LIMIT 1) last ON true"
)

_COLUMNS = "workflow_id, sequence, state, task_id, kind, output, workflow_version"
_ARRAYS = (
    "%s::text[], %s::bigint[], %s::text[], %s::text[], %s::smallint[], %s::bytea[], %s::bigint[]"
)


def _transient(err: BaseException) -> bool:
    """A failure of the connection (the server restarted, say), not of the statement."""
    return isinstance(err, psycopg.OperationalError) and not isinstance(
        err, psycopg.errors.QueryCanceled
    )


@dataclass(slots=True)
class _Append:
    fields: RowFields
    fence: tuple[str, int] | None
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Batcher:
    """Appends waiting for the commit in flight; they go together as the next batch."""

    waiting: list[_Append] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def _info(row: Sequence[Any]) -> RunInfo:
    last = None if row[17] is None else (row[17], row[18] or 0.0)
    return Record.from_columns(row).info(last)


class PostgresCheckpointStore:
    """Checkpoint logs, run records and a queue of runs in PostgreSQL.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL; ``schema`` the schema
    cano's tables live in (created, with its tables, on ``open()``); ``pool_size`` the most
    connections the store opens. Use ``async with PostgresCheckpointStore(dsn) as store:``
    or ``await store.open()`` / ``await store.close()``; a store serves the event loop it
    was opened on.
    """

    __slots__ = ("_batcher", "_dsn", "_loop", "_pool", "_pool_size", "_schema", "_sql")

    def __init__(self, dsn: str, *, schema: str = "cano", pool_size: int = 10) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ConfigurationError(f"PostgresCheckpointStore(dsn): expected a str, got {dsn!r}")
        if not isinstance(schema, str) or not schema or "\x00" in schema:
            raise ConfigurationError(
                f"PostgresCheckpointStore(schema): expected a non-empty str, got {schema!r}"
            )
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 2:
            raise ConfigurationError(
                f"PostgresCheckpointStore(pool_size): expected an int >= 2, got {pool_size!r}"
            )
        self._dsn, self._schema, self._pool_size = dsn, schema, pool_size
        self._pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batcher = _Batcher()
        self._sql: dict[str, sql.Composed] = {}

    # ----- lifecycle --------------------------------------------------------------------

    async def open(self) -> Self:
        """Connects, and creates (or checks) the schema and its tables."""
        if self._pool is not None:
            return self
        try:  # one connection first: a refused or failed login is said at once, as it is
            probe = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=10)
        except (psycopg.Error, OSError) as e:
            raise CheckpointError(
                f"PostgreSQL store {self._label()}: cannot connect: {_reason(e)}"
            ) from None
        await probe.close()
        pool = AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            kwargs={"autocommit": True},
            reconnect_timeout=_RECONNECT_FOR,
        )
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as e:
            await pool.close()
            raise CheckpointError(
                f"PostgreSQL store {self._label()}: cannot connect: {_reason(e)}"
            ) from None
        self._pool, self._loop = pool, asyncio.get_running_loop()
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Waits for the appends in flight, then closes every connection. Idempotent."""
        task = self._batcher.task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def closed(self) -> bool:
        return self._pool is None

    def __repr__(self) -> str:
        state = "closed" if self._pool is None else "open"
        return f"PostgresCheckpointStore({self._label()}, schema={self._schema!r}, {state})"

    def _label(self) -> str:
        # Never show a password.
        try:
            info = psycopg.conninfo.conninfo_to_dict(self._dsn)
        except psycopg.ProgrammingError:
            return "<invalid dsn>"
        host, port, db = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
        return f"'{host}{':' if port else ''}{port}/{db}'"

    async def _migrate(self) -> None:
        s = sql.Identifier(self._schema)

        async def create(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                # One creator at a time, across every process of the fleet.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cano-schema'))")
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {s}").format(s=s))
                await conn.execute(sql.SQL(_DDL).format(s=s))
                cur = await conn.execute(
                    sql.SQL("SELECT max(version) FROM {s}.schema_version").format(s=s)
                )
                row = await cur.fetchone()
                version = None if row is None else row[0]
                if version is None:
                    await conn.execute(
                        sql.SQL("INSERT INTO {s}.schema_version VALUES (%s)").format(s=s),
                        (SCHEMA_VERSION,),
                    )
                elif version > SCHEMA_VERSION:
                    raise CheckpointError(
                        f"PostgreSQL store {self._label()}: schema {self._schema!r} is at "
                        f"version {version}, written by a newer cano (this one knows "
                        f"{SCHEMA_VERSION}); upgrade cano"
                    )

        await self._with(create)

    # ----- running statements -----------------------------------------------------------

    def _q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` as the schema, composed once."""
        composed = self._sql.get(text)
        if composed is None:
            composed = sql.SQL(text).format(s=sql.Identifier(self._schema))
            self._sql[text] = composed
        return composed

    def _need_pool(self) -> AsyncConnectionPool:
        pool = self._pool
        if pool is None:
            raise CheckpointError(
                f"PostgreSQL store {self._label()} is not open: use `async with "
                "PostgresCheckpointStore(dsn) as store` or `await store.open()`"
            )
        return pool

    async def _with(
        self,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]],
        *,
        retry: bool = True,
    ) -> _T:
        """Runs ``work`` on a pooled connection; while the server is unreachable (a restart),
        tries again for up to 30 s (``retry=False``: never — the caller decides)."""
        pool = self._need_pool()
        deadline = time.monotonic() + _RECONNECT_FOR
        delay = 0.05
        while True:
            try:
                async with pool.connection() as conn:
                    return await work(conn)
            except Exception as e:
                if retry and _transient(e) and time.monotonic() < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                err = self._store_error(e)
                if err is e:
                    raise
                raise err from None

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def go(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(self._q(query), params)
            return await cur.fetchall() if cur.description else []

        return await self._with(go)

    # ----- the CheckpointStore protocol -------------------------------------------------

    def append(self, row: CheckpointRow) -> asyncio.Future[None]:
        """Appends ``row``; the future completes once it is committed. A row already stored
        at ``(workflow_id, sequence)`` fails it with :class:`cano.CheckpointError`; a row of a
        run whose lease this worker lost, with :class:`cano.LeaseLostError`."""
        return self._submit_append(row_fields(row))

    def _append_raw(
        self,
        workflow_id: str,
        sequence: int,
        state: str,
        task_id: str,
        kind: int,
        output: bytes | None,
        version: int,
    ) -> asyncio.Future[None]:
        return self._submit_append((workflow_id, sequence, state, task_id, kind, output, version))

    def _submit_append(self, fields: RowFields) -> asyncio.Future[None]:
        self._need_pool()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        batcher = self._batcher
        batcher.waiting.append(_Append(fields, FENCE.get(), future))
        if batcher.task is None:
            batcher.task = loop.create_task(self._commit_batches())
        return future

    async def _commit_batches(self) -> None:
        """Commits what waits, batch after batch, on one connection held for the burst (no
        pool checkout per commit); a lost connection is replaced and the batch tried again
        for up to 30 s."""
        batcher = self._batcher
        conn: psycopg.AsyncConnection[Any] | None = None
        pool = self._pool
        try:
            while batcher.waiting:
                batch, batcher.waiting = batcher.waiting, []
                deadline, delay, tries = time.monotonic() + _RECONNECT_FOR, 0.05, 0
                while True:
                    try:
                        if pool is None:
                            self._need_pool()  # raises: closed
                        assert pool is not None
                        if conn is None:
                            conn = await pool.getconn()
                        tries += 1
                        await self._insert(conn, batch, retried=tries > 1)
                        break
                    except Exception as e:
                        if _transient(e) and time.monotonic() < deadline:
                            if conn is not None and pool is not None:
                                await pool.putconn(conn)  # a broken one is discarded
                            conn = None
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, 1.0)
                            continue
                        err = self._store_error(e)
                        for item in batch:
                            _settle(item.future, err)
                        break
                    except BaseException as e:
                        for item in batch:
                            _settle(item.future, CheckpointError(f"append interrupted: {e!r}"))
                        raise
        finally:
            # Before any await: an append submitted from here on starts a batch of its own
            # (set after, it would wait for a task that is about to end).
            batcher.task = None
            if conn is not None and pool is not None:
                await pool.putconn(conn)

    def _store_error(self, err: Exception) -> Exception:
        """What a failed statement raises: cano's own errors as they are, a database's
        failure as a CheckpointError naming the store."""
        if isinstance(err, CheckpointError | LeaseLostError):
            return err
        if isinstance(err, psycopg.Error | TimeoutError):
            return CheckpointError(f"PostgreSQL store {self._label()}: {_reason(err)}")
        return err

    async def _insert(
        self, conn: psycopg.AsyncConnection[Any], batch: list[_Append], *, retried: bool
    ) -> None:
        """One transaction: unfenced rows in one statement, fenced rows in another (joined
        with their run's row ``FOR SHARE``). A row not inserted is a duplicate or fenced out:
        one follow-up read tells them apart. ``retried``: an earlier try of this batch lost
        its connection, maybe after its commit — a row found stored as it is counts as done."""
        plain = [a for a in batch if a.fence is None]
        fenced = [a for a in batch if a.fence is not None]
        stored: set[tuple[str, int]] = set()
        # One statement is atomic by itself (autocommit): a transaction only for two.
        both = conn.transaction() if plain and fenced else contextlib.nullcontext()
        async with both:
            if len(plain) == 1 and not fenced:  # one row: no arrays to build and unpack
                cur = await conn.execute(
                    self._q(
                        f"INSERT INTO {{s}}.checkpoints ({_COLUMNS}) VALUES (%s, %s, %s, %s, "
                        "%s, %s, %s) ON CONFLICT DO NOTHING RETURNING workflow_id, sequence"
                    ),
                    plain[0].fields,
                )
                stored.update((w, q) for w, q in await cur.fetchall())
            elif plain:
                cur = await conn.execute(
                    self._q(
                        f"INSERT INTO {{s}}.checkpoints ({_COLUMNS}) SELECT * FROM "
                        f"unnest({_ARRAYS}) ON CONFLICT DO NOTHING RETURNING workflow_id, sequence"
                    ),
                    _columns(plain),
                )
                stored.update((w, q) for w, q in await cur.fetchall())
            if fenced:
                cur = await conn.execute(
                    self._q(
                        f"INSERT INTO {{s}}.checkpoints ({_COLUMNS}) SELECT t.workflow_id, "
                        "t.sequence, t.state, t.task_id, t.kind, t.output, t.workflow_version "
                        f"FROM unnest({_ARRAYS}, %s::text[], %s::bigint[]) AS "
                        "t(workflow_id, sequence, state, task_id, kind, output, "
                        "workflow_version, owner, epoch) JOIN {s}.runs r ON r.workflow_id = "
                        "t.workflow_id AND r.owner = t.owner AND r.lease_epoch = t.epoch AND "
                        "r.status = 'RUNNING' FOR SHARE OF r "
                        "ON CONFLICT DO NOTHING RETURNING workflow_id, sequence"
                    ),
                    (
                        *_columns(fenced),
                        [a.fence[0] for a in fenced if a.fence],
                        [a.fence[1] for a in fenced if a.fence],
                    ),
                )
                stored.update((w, q) for w, q in await cur.fetchall())
        missing = [a for a in batch if (a.fields[0], a.fields[1]) not in stored]
        refusals = await self._explain(conn, missing, retried) if missing else {}
        seen: set[tuple[str, int]] = set()
        for item in batch:
            key = (item.fields[0], item.fields[1])
            if key in stored and key not in seen:
                seen.add(key)
                _settle(item.future, None)
            elif id(item) in refusals:
                _settle(item.future, refusals[id(item)])
            else:  # the same key twice in one batch: the first one got it
                _settle(item.future, _conflict(key))

    async def _explain(
        self, conn: psycopg.AsyncConnection[Any], missing: list[_Append], retried: bool
    ) -> dict[int, BaseException | None]:
        """Why rows were not inserted: a lost lease, or a key already taken (a conflict) —
        unless, after a lost connection, by this very row (our earlier commit: done)."""
        ids = sorted({a.fields[0] for a in missing})
        cur = await conn.execute(
            self._q(
                f"SELECT {_COLUMNS} FROM {{s}}.checkpoints WHERE workflow_id = ANY(%s) "
                "AND sequence = ANY(%s)"
            ),
            (ids, sorted({a.fields[1] for a in missing})),
        )
        rows = {(r[0], r[1]): tuple(r) for r in await cur.fetchall()}
        cur = await conn.execute(
            self._q(
                "SELECT workflow_id, owner, lease_epoch, status FROM {s}.runs "
                "WHERE workflow_id = ANY(%s)"
            ),
            (ids,),
        )
        leases = {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}
        out: dict[int, BaseException | None] = {}
        for item in missing:
            workflow_id, sequence = item.fields[0], item.fields[1]
            if item.fence is not None:
                lease = leases.get(workflow_id)
                if lease is None or lease[:2] != item.fence or lease[2] != "RUNNING":
                    out[id(item)] = _lease_lost(workflow_id)
                    continue
            existing = rows.get((workflow_id, sequence))
            same = retried and existing is not None and _same_row(existing, item.fields)
            out[id(item)] = None if same else _conflict((workflow_id, sequence))
        return out

    async def load_run(self, workflow_id: str) -> list[CheckpointRow]:
        """Every row of ``workflow_id``, ascending by sequence."""
        check_workflow_id(workflow_id, "load_run(workflow_id)")
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM {{s}}.checkpoints WHERE workflow_id = %s ORDER BY sequence",
            (workflow_id,),
        )
        return [
            CheckpointRow(w, q, st, t, RowKind(k), None if o is None else bytes(o), v)
            for w, q, st, t, k, o, v in rows
        ]

    async def clear(self, workflow_id: str) -> None:
        """Removes every row of ``workflow_id`` (a no-op for an unknown id)."""
        check_workflow_id(workflow_id, "clear(workflow_id)")
        await self._fetch("DELETE FROM {s}.checkpoints WHERE workflow_id = %s", (workflow_id,))

    async def list_runs(self) -> list[str]:
        """The workflow ids that have rows, sorted."""
        rows = await self._fetch(
            "SELECT DISTINCT workflow_id FROM {s}.checkpoints ORDER BY workflow_id"
        )
        return [r[0] for r in rows]

    async def runs_summary(self) -> list[RunSummary]:
        """One dict per run with rows, sorted by id (what ``cano runs list`` shows)."""
        rows = await self._fetch(
            "SELECT c.workflow_id, count(*), (array_agg(c.state ORDER BY c.sequence DESC))[1], "
            "max(c.sequence) FROM {s}.checkpoints c GROUP BY c.workflow_id ORDER BY 1"
        )
        return [
            {"workflow_id": w, "rows": n, "last_state": st, "last_sequence": q}
            for w, n, st, q in rows
        ]

    # ----- run records (cano.runs.RunRegistry) ------------------------------------------

    def run_started(
        self,
        workflow_id: str,
        workflow_name: str | None,
        workflow_version: int,
        state: str,
        resumed: bool,
    ) -> Awaitable[None]:
        """Records that the run starts (RUNNING), or starts again after a resume. Waited
        for, also under a Worker: statements on different pooled connections have no order,
        so a start written behind could land after the run's end."""
        return self._started(workflow_id, workflow_name, workflow_version, state, FENCE.get())

    async def _started(
        self,
        workflow_id: str,
        name: str | None,
        version: int,
        state: str,
        fence: tuple[str, int] | None,
    ) -> None:
        if fence is not None:
            rows = await self._fetch(
                "UPDATE {s}.runs SET workflow_name = coalesce(%s, workflow_name), "
                "workflow_version = %s, state = %s, attempts = attempts + 1, "
                "updated_at = clock_timestamp(), final_state = NULL, error = NULL, "
                "error_type = NULL, finished_at = NULL, waiting_for = NULL, wake_at = NULL "
                "WHERE workflow_id = %s AND owner = %s "
                "AND lease_epoch = %s AND status = 'RUNNING' RETURNING 1",
                (name, version, state, workflow_id, *fence),
            )
            if not rows:
                raise _lease_lost(workflow_id)
            return
        rows = await self._fetch(
            "INSERT INTO {s}.runs AS r (workflow_id, workflow_name, workflow_version, status, "
            "state, attempts) VALUES (%s, %s, %s, 'RUNNING', %s, 1) ON CONFLICT (workflow_id) "
            "DO UPDATE SET workflow_name = coalesce(EXCLUDED.workflow_name, r.workflow_name), "
            "workflow_version = EXCLUDED.workflow_version, status = 'RUNNING', "
            "state = EXCLUDED.state, attempts = r.attempts + 1, updated_at = clock_timestamp(), "
            "final_state = NULL, error = NULL, error_type = NULL, finished_at = NULL, "
            "waiting_for = NULL, wake_at = NULL WHERE NOT (r.status = 'RUNNING' AND "
            "r.owner IS NOT NULL AND r.lease_until >= now()) "
            "RETURNING 1",
            (workflow_id, name, version, state),
        )
        if not rows:
            owner = await self._fetch(
                "SELECT owner FROM {s}.runs WHERE workflow_id = %s", (workflow_id,)
            )
            holder = owner[0][0] if owner else None
            raise CheckpointError(
                f"run {workflow_id!r} is owned by worker {holder!r}, whose lease is current: "
                "it cannot be started or resumed here"
            )

    def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> Awaitable[None]:
        """Records how the run ended; with ``clear_log`` moves its log into the history in
        the same transaction."""
        return self._ended(workflow_id, end, clear_log, FENCE.get())

    async def _ended(
        self, workflow_id: str, end: RunEnd, clear_log: bool, fence: tuple[str, int] | None
    ) -> None:
        values = (end.status.value, end.state, end.final_state, end.error, end.error_type)
        # One statement (one round trip, atomic): the record, then — only if the record was
        # written (a fenced one may not be) — the log moved into the history.
        if fence is not None:
            record = (
                "UPDATE {s}.runs SET status = %s, state = coalesce(%s, state), final_state = "
                "%s, error = %s, error_type = %s, owner = NULL, updated_at = now(), "
                "finished_at = now() WHERE workflow_id = %s AND owner = %s AND "
                "lease_epoch = %s AND status = 'RUNNING' RETURNING workflow_id"
            )
            params: tuple[Any, ...] = (*values, workflow_id, *fence)
        else:
            record = (
                "INSERT INTO {s}.runs AS r (workflow_id, status, state, final_state, error, "
                "error_type, attempts, created_at, updated_at, finished_at) VALUES (%s, %s, %s, "
                "%s, %s, %s, 1, now(), now(), now()) ON CONFLICT (workflow_id) DO UPDATE SET "
                "status = EXCLUDED.status, state = coalesce(EXCLUDED.state, r.state), "
                "final_state = EXCLUDED.final_state, error = EXCLUDED.error, "
                "error_type = EXCLUDED.error_type, owner = NULL, updated_at = now(), "
                "finished_at = now() "
                "RETURNING workflow_id"
            )
            params = (workflow_id, *values)
        move = (
            "moved AS (DELETE FROM {s}.checkpoints c USING ended WHERE c.workflow_id = "
            "ended.workflow_id RETURNING c.workflow_id, c.sequence, c.state, c.task_id, c.kind, "
            "c.output, c.workflow_version, c.at), kept AS (INSERT INTO {s}.steps SELECT * FROM "
            "moved ON CONFLICT (workflow_id, sequence) DO UPDATE SET state = EXCLUDED.state, "
            "task_id = EXCLUDED.task_id, kind = EXCLUDED.kind, output = EXCLUDED.output, "
            "workflow_version = EXCLUDED.workflow_version, at = EXCLUDED.at RETURNING 1), "
        )
        rows = await self._fetch(
            f"WITH ended AS ({record}), {move if clear_log else ''}"
            "done AS (SELECT count(*) AS n FROM ended) SELECT n FROM done",
            params,
        )
        if fence is not None and rows[0][0] == 0:
            raise _lease_lost(workflow_id)

    async def get_run(self, workflow_id: str) -> RunInfo | None:
        """The run's record, or None."""
        rows = await self._fetch(
            f"SELECT {_RECORD_COLUMNS}, last.last_state, last.last_at FROM {{s}}.runs r "
            f"{_LAST_ROW} WHERE r.workflow_id = %s",
            (workflow_id,),
        )
        return _info(rows[0]) if rows else None

    async def list_run_infos(
        self,
        statuses: frozenset[RunStatus] | None,
        workflow_name: str | None,
        since: float | None,
        limit: int,
        offset: int,
    ) -> list[RunInfo]:
        """Records passing the filters, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            clauses.append("r.status = ANY(%s)")
            params.append(sorted(s.value for s in statuses))
        if workflow_name is not None:
            clauses.append("r.workflow_name = %s")
            params.append(workflow_name)
        if since is not None:
            clauses.append("r.created_at >= to_timestamp(%s)")
            params.append(since)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._fetch(
            f"SELECT {_RECORD_COLUMNS}, last.last_state, last.last_at FROM {{s}}.runs r "
            f"{_LAST_ROW} {where} ORDER BY r.created_at DESC, r.workflow_id DESC "
            "LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [_info(r) for r in rows]

    async def run_steps(self, workflow_id: str) -> list[StepInfo]:
        """The run's history, then its live log, ascending."""
        rows = await self._fetch(
            "SELECT sequence, state, task_id, kind, output, extract(epoch FROM at)::float8, 0 "
            "FROM {s}.steps WHERE workflow_id = %s UNION ALL SELECT sequence, state, task_id, "
            "kind, output, extract(epoch FROM at)::float8, 1 FROM {s}.checkpoints "
            "WHERE workflow_id = %s ORDER BY 7, 1",
            (workflow_id, workflow_id),
        )
        finished = await self._fetch(
            "SELECT extract(epoch FROM finished_at)::float8 FROM {s}.runs WHERE workflow_id = %s",
            (workflow_id,),
        )
        return build_steps(
            ((q, st, t, k, None if o is None else bytes(o), at) for q, st, t, k, o, at, _ in rows),
            finished[0][0] if finished else None,
        )

    async def prune_runs(self, finished_before: float, statuses: frozenset[RunStatus]) -> int:
        """Removes the records, history and logs of runs that ended before the cutoff."""
        if not statuses:
            return 0

        async def go(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.transaction():
                cur = await conn.execute(
                    self._q(
                        "DELETE FROM {s}.runs WHERE status = ANY(%s) AND finished_at IS NOT NULL "
                        "AND finished_at < to_timestamp(%s) RETURNING workflow_id"
                    ),
                    (sorted(s.value for s in statuses), finished_before),
                )
                ids = [r[0] for r in await cur.fetchall()]
                for table in ("steps", "checkpoints", "signals"):
                    await conn.execute(
                        self._q(f"DELETE FROM {{s}}.{table} WHERE workflow_id = ANY(%s)"), (ids,)
                    )
                return len(ids)

        return await self._with(go)

    async def delete_run(self, workflow_id: str) -> None:
        """Forgets the run: its record, its history and its log."""

        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                for table in ("runs", "steps", "checkpoints", "signals"):
                    await conn.execute(
                        self._q(f"DELETE FROM {{s}}.{table} WHERE workflow_id = %s"),
                        (workflow_id,),
                    )

        await self._with(go)

    # ----- the queue (cano.worker.RunQueue) ---------------------------------------------

    async def enqueue_run(
        self,
        workflow_id: str,
        workflow_name: str,
        initial: str,
        input: bytes | None,
        queue: str,
        not_before: float | None,
        priority: int,
    ) -> RunInfo | None:
        """Stores a PENDING run unless ``workflow_id`` exists (and wakes the workers of its
        queue); returns the record."""
        # One statement: the insert, and a NOTIFY only when it inserted.
        await self._fetch(
            "WITH added AS (INSERT INTO {s}.runs (workflow_id, workflow_name, status, state, "
            "attempts, input, queue, initial, priority, not_before) VALUES (%s, %s, 'PENDING', "
            "%s, 0, %s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT (workflow_id) DO NOTHING "
            "RETURNING queue) SELECT pg_notify('cano_wake', queue) FROM added",
            (workflow_id, workflow_name, initial, input, queue, initial, priority, not_before),
        )
        return await self.get_run(workflow_id)

    async def claim_runs(
        self,
        worker_id: str,
        workflow_names: tuple[str, ...],
        queues: tuple[str, ...],
        limit: int,
        lease: float,
    ) -> list[Claim]:
        """Claims up to ``limit`` due PENDING runs and RUNNING runs whose lease expired
        (``FOR UPDATE SKIP LOCKED``: workers never wait for each other), within the queues'
        caps; each becomes RUNNING, owned by ``worker_id`` under a new epoch, with a lease
        of ``lease`` seconds on the database's clock."""
        if limit <= 0 or not workflow_names or not queues:
            return []

        async def go(conn: psycopg.AsyncConnection[Any]) -> list[Claim]:
            async with conn.transaction():
                cur = await conn.execute(
                    self._q(
                        "SELECT name, concurrency FROM {s}.queues WHERE name = ANY(%s) "
                        "AND concurrency IS NOT NULL ORDER BY name FOR UPDATE"
                    ),
                    (list(queues),),
                )
                caps = dict(await cur.fetchall())
                room: dict[str, int] = {}
                if caps:
                    cur = await conn.execute(
                        self._q(
                            "SELECT queue, count(*) FROM {s}.runs WHERE queue = ANY(%s) AND "
                            "status = 'RUNNING' AND lease_until >= now() GROUP BY queue"
                        ),
                        (list(caps),),
                    )
                    busy = dict(await cur.fetchall())
                    room = {q: max(0, c - busy.get(q, 0)) for q, c in caps.items()}
                cur = await conn.execute(
                    self._q(
                        "SELECT workflow_id, queue FROM {s}.runs WHERE workflow_name = ANY(%s) "
                        "AND queue = ANY(%s) AND ((status = 'PENDING' AND (not_before IS NULL "
                        "OR not_before <= now())) OR (status = 'WAITING' AND not_before <= "
                        "now()) OR (status = 'RUNNING' AND owner IS NOT NULL "
                        "AND lease_until < now())) ORDER BY priority, created_at "
                        "LIMIT %s FOR UPDATE SKIP LOCKED"
                    ),
                    (list(workflow_names), list(queues), limit),
                )
                chosen = []
                for workflow_id, queue_name in await cur.fetchall():
                    if queue_name in room:
                        if room[queue_name] <= 0:
                            continue
                        room[queue_name] -= 1
                    chosen.append(workflow_id)
                if not chosen:
                    return []
                cur = await conn.execute(
                    self._q(
                        "UPDATE {s}.runs r SET status = 'RUNNING', owner = %s, lease_epoch = "
                        "lease_epoch + 1, lease_until = now() + make_interval(secs => %s), "
                        "updated_at = clock_timestamp() WHERE workflow_id = ANY(%s) RETURNING "
                        "workflow_id, workflow_name, initial, input, lease_epoch, attempts, "
                        "EXISTS (SELECT 1 FROM {s}.checkpoints c WHERE c.workflow_id = "
                        "r.workflow_id)"
                    ),
                    (worker_id, lease, chosen),
                )
                by_id = {r[0]: r for r in await cur.fetchall()}
            return [
                Claim(
                    workflow_id=w,
                    workflow_name=name or "",
                    initial=initial,
                    input=None if data is None else orjson.loads(data),
                    epoch=epoch,
                    resume=bool(has_log),
                    attempt=attempts + 1,
                )
                for w in chosen
                for _, name, initial, data, epoch, attempts, has_log in [by_id[w]]
            ]

        return await self._with(go)

    async def renew_leases(
        self, worker_id: str, held: list[tuple[str, int]], lease: float
    ) -> tuple[list[str], list[str]]:
        """Extends the leases of ``held`` (id, epoch) in one statement; returns (lost, cancel
        requested). A run that just ended under its lease is neither."""
        if not held:
            return [], []
        ids = [w for w, _ in held]
        rows = await self._fetch(
            "WITH renewed AS (UPDATE {s}.runs SET lease_until = now() + make_interval(secs => "
            "%s) WHERE owner = %s AND status = 'RUNNING' AND (workflow_id, lease_epoch) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[])) RETURNING workflow_id) "
            "SELECT workflow_id, lease_epoch, status, owner, cancel_requested FROM {s}.runs "
            "WHERE workflow_id = ANY(%s)",
            (lease, worker_id, ids, [e for _, e in held], ids),
        )
        found = {r[0]: r[1:] for r in rows}
        return renewal_outcome(worker_id, held, found)

    async def release_leases(self, worker_id: str, held: list[tuple[str, int]]) -> None:
        """Ends the leases of ``held`` now, so that another worker may take the runs over."""
        if held:
            await self._fetch(
                "UPDATE {s}.runs SET lease_until = now() - interval '1 second', updated_at = "
                "clock_timestamp() WHERE owner = %s AND status = 'RUNNING' AND "
                "(workflow_id, lease_epoch) IN (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                (worker_id, [w for w, _ in held], [e for _, e in held]),
            )

    async def cancel_run(self, workflow_id: str) -> RunInfo | None:
        """PENDING/WAITING → CANCELLED now; RUNNING → cancellation requested of its owner."""

        async def go(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(
                    self._q(
                        "UPDATE {s}.runs SET status = 'CANCELLED', finished_at = "
                        "clock_timestamp(), updated_at = clock_timestamp(), error_type = "
                        "'WorkflowCancelledError', error = 'cancelled before it started' "
                        "WHERE workflow_id = %s AND status IN ('PENDING', 'WAITING')"
                    ),
                    (workflow_id,),
                )
                await conn.execute(
                    self._q(
                        "UPDATE {s}.runs SET cancel_requested = true WHERE workflow_id = %s "
                        "AND status = 'RUNNING'"
                    ),
                    (workflow_id,),
                )

        await self._with(go)
        return await self.get_run(workflow_id)

    # ----- signals (cano.waits.SignalBox) -----------------------------------------------

    async def send_signal(
        self, workflow_id: str, name: str, payload: bytes | None, dedup_key: str | None
    ) -> bool:
        """Keeps a signal for the run; False when ``dedup_key`` was already sent."""
        # One statement: the signal, and a run parked for it due now (and workers woken).
        rows = await self._fetch(
            "WITH sent AS (INSERT INTO {s}.signals (workflow_id, name, payload, dedup_key) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (workflow_id, name, dedup_key) DO NOTHING "
            "RETURNING workflow_id, name), woken AS (UPDATE {s}.runs r SET not_before = now() "
            "FROM sent WHERE r.workflow_id = sent.workflow_id AND r.status = 'WAITING' AND "
            "r.waiting_for = sent.name RETURNING r.queue) SELECT (SELECT count(*) FROM sent), "
            "(SELECT count(pg_notify('cano_wake', queue)) FROM woken)",
            (workflow_id, name, payload, dedup_key),
        )
        return bool(rows[0][0])

    async def park_run(
        self, workflow_id: str, state: str, signal: str | None, wake_at: float | None
    ) -> None:
        """The run's worker gives it back to wait in ``state`` (fenced by its lease):
        WAITING until a signal ``signal`` arrives or ``wake_at`` passes."""
        fence = FENCE.get()
        if fence is None:
            raise _lease_lost(workflow_id)
        rows = await self._fetch(
            "UPDATE {s}.runs r SET status = 'WAITING', owner = NULL, lease_until = NULL, "
            "state = %s, waiting_for = %s, wake_at = to_timestamp(%s), "
            "updated_at = clock_timestamp(), "
            "not_before = CASE WHEN EXISTS (SELECT 1 FROM {s}.signals g WHERE g.workflow_id = "
            "r.workflow_id AND g.name = %s AND g.consumed_by IS NULL) THEN now() ELSE "
            "to_timestamp(%s) END WHERE workflow_id = %s AND owner = %s AND lease_epoch = %s "
            "AND status = 'RUNNING' RETURNING 1",
            (state, signal, wake_at, signal, wake_at, workflow_id, *fence),
        )
        if not rows:
            raise _lease_lost(workflow_id)

    async def take_signal(
        self, workflow_id: str, name: str, token: str
    ) -> tuple[bool, bytes | None]:
        """The signal consumed under ``token``, or the oldest unconsumed one of ``name``,
        consumed now — in one transaction, fenced by the run's lease under a Worker."""
        fence = FENCE.get()

        async def go(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, bytes | None]:
            async with conn.transaction():
                if fence is not None:
                    cur = await conn.execute(
                        self._q(
                            "SELECT 1 FROM {s}.runs WHERE workflow_id = %s AND owner = %s AND "
                            "lease_epoch = %s AND status = 'RUNNING' FOR SHARE"
                        ),
                        (workflow_id, *fence),
                    )
                    if await cur.fetchone() is None:
                        raise _lease_lost(workflow_id)
                cur = await conn.execute(
                    self._q(
                        "SELECT payload FROM {s}.signals WHERE workflow_id = %s AND "
                        "consumed_by = %s"
                    ),
                    (workflow_id, token),
                )
                row = await cur.fetchone()
                if row is None:
                    cur = await conn.execute(
                        self._q(
                            "UPDATE {s}.signals SET consumed_by = %s WHERE id = (SELECT id "
                            "FROM {s}.signals WHERE workflow_id = %s AND name = %s AND "
                            "consumed_by IS NULL ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                            "RETURNING payload"
                        ),
                        (token, workflow_id, name),
                    )
                    row = await cur.fetchone()
            if row is None:
                return False, None
            return True, None if row[0] is None else bytes(row[0])

        return await self._with(go)

    async def watch_enqueues(self, wake: Callable[[], None]) -> None:
        """Calls ``wake()`` whenever a run is enqueued anywhere in the database (``LISTEN
        cano_wake``), until cancelled: a Worker's idle wait ends at once instead of at its
        next poll. A lost connection is opened again (and ``wake()`` called, in case
        something was enqueued meanwhile); notifications are only a hint — Workers poll."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                async with conn:
                    await conn.execute("LISTEN cano_wake")
                    wake()
                    while True:
                        # Windows of a second: a cancellation psycopg swallowed (see
                        # cano._cancel) is seen at the end of the window it landed in.
                        async for _ in conn.notifies(timeout=1.0):
                            wake()
                        stop_if_cancelled()
            except (psycopg.Error, OSError):
                await asyncio.sleep(1.0)
            stop_if_cancelled()

    async def set_queue_cap(self, name: str, concurrency: int | None) -> None:
        """Caps the runs of queue ``name`` RUNNING at once, fleet-wide (None: no cap)."""
        await self._fetch(
            "INSERT INTO {s}.queues (name, concurrency) VALUES (%s, %s) ON CONFLICT (name) "
            "DO UPDATE SET concurrency = EXCLUDED.concurrency",
            (name, concurrency),
        )


def _columns(items: list[_Append]) -> tuple[list[Any], ...]:
    return tuple(list(column) for column in zip(*(a.fields for a in items), strict=True))


def _same_row(stored: tuple[Any, ...], fields: RowFields) -> bool:
    _, _, state, task_id, kind, output, version = stored
    output = None if output is None else bytes(output)
    return (state, task_id, kind, output, version) == fields[2:]


def _settle(future: asyncio.Future[None], err: BaseException | None) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(err)


def _conflict(key: tuple[str, int]) -> CheckpointError:
    return CheckpointError(conflict_message(*key))


def _lease_lost(workflow_id: str) -> LeaseLostError:
    return LeaseLostError.of_run(workflow_id)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()
