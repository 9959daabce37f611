"""SqliteCheckpointStore: one SQLite file shared by several processes on one machine.

Every process opens its own store on the same file; WAL mode lets readers run beside the
single writer, and ``busy_timeout`` makes a process wait (instead of failing with "database
is locked") while another one commits::

    async with cano.SqliteCheckpointStore("runs.db") as store:
        wf.with_checkpoint_store(store)
        await wf.orchestrate(Step.START, workflow_id="order-7")

Each store owns one connection and one writer thread, so the event loop never blocks on the
file. Appends that arrive while the thread is committing are committed together in the next
transaction (group commit): one ``BEGIN IMMEDIATE … COMMIT`` and one fsync for the whole
batch. Reads go through the same thread, in the order they were called, so a ``load_run``
sees every append called before it. Open one store per file per process and share it
between runs (several stores on one file work, but they contend for the write lock).

The table is ``cano_checkpoints(workflow_id, sequence, state, task_id, kind, output,
workflow_version)`` keyed by ``(workflow_id, sequence)``; other tables in the file are left
alone, so the log can live in an application's own database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import orjson

from cano._leases import renewal_outcome
from cano._values import seconds
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
    write_behind,
)
from cano.store import (
    CheckpointRow,
    RowKind,
    RunSummary,
    _quoted,
    check_workflow_id,
    conflict_message,
    row_fields,
)

__all__ = ["SqliteCheckpointStore"]

_COLUMNS: Final = (
    "workflow_id",
    "sequence",
    "state",
    "task_id",
    "kind",
    "output",
    "workflow_version",
    "at",
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cano_checkpoints (
    workflow_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    output BLOB,
    workflow_version INTEGER NOT NULL,
    at REAL,
    PRIMARY KEY (workflow_id, sequence)
) WITHOUT ROWID
"""
# Run records and the history of runs whose log was cleared (cano.runs.RunRegistry).
_RECORD_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS cano_runs (
    workflow_id TEXT PRIMARY KEY,
    workflow_name TEXT,
    workflow_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    state TEXT,
    final_state TEXT,
    error TEXT,
    error_type TEXT,
    input BLOB,
    queue TEXT,
    owner TEXT,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    initial TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    not_before REAL,
    lease_until REAL,
    lease_epoch INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    waiting_for TEXT,
    wake_at REAL
)""",
    "CREATE INDEX IF NOT EXISTS cano_runs_created ON cano_runs (created_at)",
    # What workers claim: only PENDING runs are in it, so a run leaves it once (when it is
    # claimed) and its later status changes touch no index page.
    "CREATE INDEX IF NOT EXISTS cano_runs_pending ON cano_runs (priority, created_at) "
    "WHERE status = 'PENDING'",
    "CREATE INDEX IF NOT EXISTS cano_runs_leased ON cano_runs (lease_until) "
    "WHERE status = 'RUNNING'",
    # WAITING runs that are due again: their deadline (or a signal) set not_before.
    "CREATE INDEX IF NOT EXISTS cano_runs_waking ON cano_runs (not_before) "
    "WHERE status = 'WAITING'",
    """CREATE TABLE IF NOT EXISTS cano_queues (
    name TEXT PRIMARY KEY,
    concurrency INTEGER
)""",
    """CREATE TABLE IF NOT EXISTS cano_signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload BLOB,
    dedup_key TEXT,
    consumed_by TEXT,
    sent_at REAL NOT NULL,
    UNIQUE (workflow_id, name, dedup_key)
)""",
    """CREATE TABLE IF NOT EXISTS cano_steps (
    workflow_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    output BLOB,
    at REAL,
    PRIMARY KEY (workflow_id, sequence)
) WITHOUT ROWID""",
)
_RECORD_COLUMNS: Final = (
    "workflow_id, workflow_name, workflow_version, status, state, final_state, error, "
    "error_type, input, queue, owner, attempts, created_at, updated_at, finished_at, "
    "waiting_for, wake_at"
)
_HAS_TABLE: Final = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cano_checkpoints'"
_INSERT: Final = "INSERT INTO cano_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The same insert fenced by a lease, in one statement: no row when the lease is not current.
_INSERT_FENCED: Final = (
    "INSERT INTO cano_checkpoints SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS ("
    "SELECT 1 FROM cano_runs WHERE workflow_id = ? AND owner = ? AND lease_epoch = ?)"
)
_SELECT_RUN: Final = (
    "SELECT sequence, state, task_id, kind, output, workflow_version "
    "FROM cano_checkpoints WHERE workflow_id = ? ORDER BY sequence"
)
_DELETE_RUN: Final = "DELETE FROM cano_checkpoints WHERE workflow_id = ?"
_LIST_RUNS: Final = "SELECT DISTINCT workflow_id FROM cano_checkpoints ORDER BY workflow_id"
# SQLite takes the bare columns (state) from the row holding the max(sequence).
_SUMMARY: Final = (
    "SELECT workflow_id, count(*), state, max(sequence) FROM cano_checkpoints "
    "GROUP BY workflow_id ORDER BY workflow_id"
)

_MAX_BATCH: Final = 4096  # requests per transaction: bounds the latency of the first one
_KINDS: Final = {kind.value: kind for kind in RowKind}
_DURABILITY: Final = {"immediate": "FULL", "eventual": "NORMAL"}

# Request operations. A request is (op, argument, loop, future); loop is None for the
# blocking calls (flush, close), whose future is a concurrent.futures.Future.
(
    _APPEND,
    _LOAD,
    _CLEAR,
    _LIST,
    _SUMMARY_OP,
    _FLUSH,
    _CLOSE,
    _STARTED,
    _ENDED,
    _GET,
    _INFOS,
    _STEPS,
    _PRUNE,
    _ENQUEUE,
    _CLAIM,
    _RENEW,
    _RELEASE,
    _CANCEL,
    _SET_QUEUE,
    _DELETE,
    _SEND_SIGNAL,
    _TAKE_SIGNAL,
    _PARK,
) = range(23)
_WRITES: Final = frozenset(
    {_APPEND, _CLEAR, _STARTED, _ENDED, _PRUNE, _ENQUEUE, _CLAIM, _RENEW, _RELEASE, _CANCEL}
    | {_SET_QUEUE, _DELETE, _SEND_SIGNAL, _TAKE_SIGNAL, _PARK}
)
_Request: TypeAlias = tuple[int, Any, "asyncio.AbstractEventLoop | None", Any]
_Outcome: TypeAlias = tuple[Any, "BaseException | None"]

# Bumped in every fork() child: a store opened before the fork cannot be used after it.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Resolves, on their own loop, the futures of one batch (cancelled ones are skipped)."""
    for future, value, error in items:
        if future.done():
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class _Engine:
    """The connection and its writer thread. Holds no reference to the store object, so a
    store that is dropped without ``close()`` is closed (and flushed) by its finalizer."""

    def __init__(self, label: str, durability: str, busy_timeout: float, create: bool) -> None:
        self.label = label  # the path as the user gave it, for messages
        # The file as an absolute path (None in memory), and as the URI SQLite opens: a URI
        # so that no file name is mistaken for one, and so that create=False can say mode=rw.
        self.file = None if label == ":memory:" else str(Path(label).absolute())
        self.uri = (
            "file::memory:"
            if self.file is None
            else f"{Path(self.file).as_uri()}?mode={'rwc' if create else 'rw'}"
        )
        self.create = create
        self.durability = durability
        self.busy_timeout = busy_timeout
        self.queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.closed = False
        self.pid = os.getpid()
        self.generation = _fork_generation[0]
        self.conn = self._connect()
        self.thread = threading.Thread(
            target=self._run, name=f"cano-sqlite-writer({label})", daemon=True
        )
        self.thread.start()

    # ----- opening ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.uri,
                timeout=self.busy_timeout,
                isolation_level=None,  # no implicit transactions: BEGIN/COMMIT are ours
                check_same_thread=False,  # opened here, then used by the writer thread only
                uri=True,
            )
        except sqlite3.Error as e:
            raise self.error(e, opening=True) from e
        try:
            if not self.create and not conn.execute(_HAS_TABLE).fetchall():
                conn.close()
                raise CheckpointError(
                    f"checkpoint store {_quoted(self.label)} is not a cano checkpoint store: "
                    "the SQLite file has no cano_checkpoints table"
                )
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute(f"PRAGMA synchronous={_DURABILITY[self.durability]}")
            conn.execute(_SCHEMA)
            columns = tuple(r[1] for r in conn.execute("PRAGMA table_info(cano_checkpoints)"))
            if columns == _COLUMNS[:-1]:  # written by a cano without run records
                conn.execute("ALTER TABLE cano_checkpoints ADD COLUMN at REAL")
                columns = _COLUMNS
            for statement in _RECORD_SCHEMA:
                conn.execute(statement)
            runs = {r[1] for r in conn.execute("PRAGMA table_info(cano_runs)")}
            for column, kind in (("waiting_for", "TEXT"), ("wake_at", "REAL")):
                if column not in runs:  # written by a cano without wait states
                    conn.execute(f"ALTER TABLE cano_runs ADD COLUMN {column} {kind}")
        except sqlite3.Error as e:
            conn.close()
            raise self.error(e, opening=True) from e
        if columns != _COLUMNS:
            conn.close()
            raise CheckpointError(
                f"checkpoint store {_quoted(self.label)} is not a cano checkpoint store or is "
                f"corrupted: its table cano_checkpoints has the columns {list(columns)}, "
                f"expected {list(_COLUMNS)}"
            )
        return conn

    def error(self, e: BaseException, *, opening: bool = False) -> CheckpointError:
        """A CheckpointError naming the file for a failure of SQLite (or of the OS)."""
        where = f"checkpoint store {_quoted(self.label)}"
        name = getattr(e, "sqlite_errorname", "")
        if isinstance(e, sqlite3.DatabaseError) and name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return CheckpointError(f"{where} is not a cano checkpoint store or is corrupted: {e}")
        if name.startswith("SQLITE_BUSY") or "database is locked" in str(e):
            return CheckpointError(
                f"{where}: sqlite: {e} (another connection held the file's write lock for "
                f"longer than busy_timeout={self.busy_timeout:g}s)"
            )
        if opening and name == "SQLITE_CANTOPEN":
            return CheckpointError(f"{where}: cannot open the file: {e}")
        return CheckpointError(f"{where}: sqlite: {e}")

    # ----- calls from any thread --------------------------------------------------------

    def refused(self) -> bool:
        return self.closed or self.generation != _fork_generation[0]

    def refusal(self) -> CheckpointError:
        """Why requests are refused: a fork() child, or a closed store."""
        if self.generation != _fork_generation[0]:
            return CheckpointError(
                f"checkpoint store {_quoted(self.label)} was opened by process {self.pid} and "
                f"cannot be used from process {os.getpid()} (a fork() child); open a new store "
                "in the child"
            )
        return CheckpointError(f"checkpoint store {_quoted(self.label)} is closed")

    def call_blocking(self, op: int) -> None:
        """Runs ``op`` (flush) on the writer thread and waits for it."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self.lock:
            if self.refused():
                raise self.refusal()
            self.queue.put((op, None, None, done))
        done.result()

    def close(self) -> None:
        """Flushes, closes the connection and stops the thread; waits unless called from the
        writer thread itself. Idempotent; a fork() child only forgets the store."""
        if self.generation != _fork_generation[0]:
            self.closed = True  # the connection and thread belong to the parent
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self.lock:
            first = not self.closed
            self.closed = True
            if first:
                self.queue.put((_CLOSE, None, None, done))
        if threading.current_thread() is self.thread:
            return  # the writer dropped the store (a GC pass): it closes after this batch
        self.thread.join()
        if first:
            done.result()

    def close_async(self) -> asyncio.Future[None]:
        """``close()`` without blocking the loop: the future completes once it is closed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self.generation != _fork_generation[0]:
            self.closed = True
            future.set_result(None)
            return future
        with self.lock:
            first = not self.closed
            self.closed = True
            if first:
                self.queue.put((_CLOSE, None, loop, future))
        if not first:
            # Closed already, or closing: wait for the thread without blocking the loop.
            if self.thread.is_alive():
                return asyncio.ensure_future(asyncio.to_thread(self.thread.join))
            future.set_result(None)
        return future

    # ----- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        batch: list[_Request] = []
        try:
            while True:
                batch = [get()]
                with contextlib.suppress(queue.Empty):
                    while len(batch) < _MAX_BATCH:
                        batch.append(get_nowait())
                if self._handle(batch):
                    return
        except BaseException as e:  # a bug: fail every waiter, never leave one hanging
            with self.lock:
                self.closed = True
            failure = CheckpointError(
                f"checkpoint store {_quoted(self.label)}: the writer thread failed: {e!r}"
            )
            unresolved = [req for req in batch if not req[3].done()]
            self._fail_rest(
                failure,
                deliver_first=(
                    unresolved,
                    [(None, CheckpointError(str(failure))) for _ in unresolved],
                ),
            )
            with contextlib.suppress(Exception):
                self.conn.close()
            raise

    def _handle(self, batch: list[_Request]) -> bool:
        """Runs one batch; True once the store is closed."""
        stop = next((i for i, req in enumerate(batch) if req[0] == _CLOSE), len(batch))
        work, tail = batch[:stop], batch[stop:]
        outcomes = self._execute(work) if work else []
        if any(req[0] == _FLUSH for req in work) and self.durability == "eventual":
            problem = self._fsync()
            if problem is not None:
                outcomes = [
                    (None, problem) if req[0] == _FLUSH else out
                    for req, out in zip(work, outcomes, strict=True)
                ]
        if tail:
            closing: BaseException | None = self._fsync() if self.durability == "eventual" else None
            try:
                self.conn.close()
            except sqlite3.Error as e:
                closing = closing or self.error(e)
            outcomes.append((None, closing))
            gone = CheckpointError(f"checkpoint store {_quoted(self.label)} is closed")
            outcomes.extend((None, CheckpointError(str(gone))) for _ in tail[1:])
            work.extend(tail)
            self._fail_rest(gone, deliver_first=(work, outcomes))
            return True
        self._deliver(work, outcomes)
        return False

    def _execute(self, work: list[_Request]) -> list[_Outcome]:
        conn = self.conn
        outcomes: list[_Outcome] = []
        write = any(req[0] in _WRITES for req in work)
        now = time.time()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                for op, argument, _, _ in work:
                    if op == _APPEND:
                        values, fence = argument
                        outcomes.append(self._insert((*values, now), fence))
                    elif op in _RECORD_OPS:
                        try:
                            outcomes.append((_RECORD_OPS[op](self, argument, now), None))
                        except CheckpointError as refused:  # a lost lease, an owned run
                            outcomes.append((None, refused))
                    elif op == _LOAD:
                        outcomes.append(self._load(argument))
                    elif op == _CLEAR:
                        conn.execute(_DELETE_RUN, (argument,))
                        outcomes.append((None, None))
                    elif op == _LIST:
                        outcomes.append(([r[0] for r in conn.execute(_LIST_RUNS)], None))
                    elif op == _SUMMARY_OP:
                        summaries: list[RunSummary] = [
                            {"workflow_id": w, "rows": n, "last_state": s, "last_sequence": q}
                            for w, n, s, q in conn.execute(_SUMMARY)
                        ]
                        outcomes.append((summaries, None))
                    else:  # _FLUSH: ordered after everything before it; synced below
                        outcomes.append((None, None))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            # Nothing of the batch was committed: every request fails, each with its own error.
            return [(None, self.error(e)) for _ in work]
        return outcomes

    def _insert(self, values: tuple[Any, ...], fence: tuple[str, int] | None) -> _Outcome:
        try:
            if fence is None:
                self.conn.execute(_INSERT, values)
            elif not self.conn.execute(_INSERT_FENCED, (*values, values[0], *fence)).rowcount:
                return None, self._lost(values[0])
        except sqlite3.IntegrityError as e:
            if e.sqlite_errorname in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
                return None, CheckpointError(conflict_message(values[0], values[1]))
            return None, self.error(e)  # the statement alone was undone; the batch goes on
        except (ValueError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as e:
            # A value SQLite cannot take (e.g. a lone surrogate in a str): this row only.
            return None, CheckpointError(
                f"checkpoint store {_quoted(self.label)}: cannot store the row of workflow "
                f"{_quoted(str(values[0]))} at sequence {values[1]}: {e}"
            )
        return None, None

    # ----- run records (on the writer thread, inside the batch's transaction) ----------

    def _lost(self, workflow_id: str) -> LeaseLostError:
        return LeaseLostError(
            f"checkpoint store {_quoted(self.label)}: the lease on run {_quoted(workflow_id)} "
            "is no longer this worker's (another worker took the run over)"
        )

    def _started(self, args: tuple[Any, ...], now: float) -> None:
        workflow_id, name, version, state, _resumed, fence = args
        if fence is not None:  # a worker's run: its record exists, fenced in one statement
            updated = self.conn.execute(
                "UPDATE cano_runs SET workflow_name = coalesce(?, workflow_name), "
                "workflow_version = ?, status = 'RUNNING', state = ?, attempts = attempts + 1, "
                "updated_at = ?, final_state = NULL, error = NULL, error_type = NULL, "
                "finished_at = NULL, waiting_for = NULL, wake_at = NULL "
                "WHERE workflow_id = ? AND owner = ? AND lease_epoch = ?",
                (name, version, state, now, workflow_id, *fence),
            ).rowcount
            if not updated:
                raise self._lost(workflow_id)
            return
        held = self.conn.execute(
            "SELECT owner FROM cano_runs WHERE workflow_id = ? AND status = 'RUNNING' "
            "AND owner IS NOT NULL AND lease_until >= ?",
            (workflow_id, now),
        ).fetchone()
        if held is not None:
            raise _owned_elsewhere(self.label, workflow_id, held[0])
        self.conn.execute(
            "INSERT INTO cano_runs (workflow_id, workflow_name, workflow_version, status, "
            "state, attempts, created_at, updated_at) VALUES (?, ?, ?, 'RUNNING', ?, 1, ?, ?) "
            "ON CONFLICT (workflow_id) DO UPDATE SET "
            "workflow_name = coalesce(excluded.workflow_name, workflow_name), "
            "workflow_version = excluded.workflow_version, status = 'RUNNING', "
            "state = excluded.state, attempts = attempts + 1, updated_at = excluded.updated_at, "
            "final_state = NULL, error = NULL, error_type = NULL, finished_at = NULL, "
            "waiting_for = NULL, wake_at = NULL",
            (workflow_id, name, version, state, now, now),
        )

    def _ended(self, args: tuple[Any, ...], now: float) -> None:
        workflow_id, end, clear_log, fence = args
        status, state, final_state = end.status.value, end.state, end.final_state
        error_type, error = end.error_type, end.error
        if fence is not None:
            updated = self.conn.execute(
                "UPDATE cano_runs SET status = ?, state = coalesce(?, state), final_state = ?, "
                "error = ?, error_type = ?, updated_at = ?, finished_at = ?, owner = NULL, "
                "lease_until = NULL, cancel_requested = 0 "
                "WHERE workflow_id = ? AND owner = ? AND lease_epoch = ?",
                (status, state, final_state, error, error_type, now, now, workflow_id, *fence),
            ).rowcount
            if not updated:
                raise self._lost(workflow_id)
        else:
            self._upsert_end(workflow_id, status, state, final_state, error_type, error, now)
        if clear_log:
            self._move_to_history(workflow_id)

    def _upsert_end(
        self,
        workflow_id: str,
        status: str,
        state: str | None,
        final_state: str | None,
        error_type: str | None,
        error: str | None,
        now: float,
    ) -> None:
        self.conn.execute(
            "INSERT INTO cano_runs (workflow_id, workflow_version, status, state, final_state, "
            "error, error_type, attempts, created_at, updated_at, finished_at) "
            "VALUES (?, 0, ?, ?, ?, ?, ?, 1, ?, ?, ?) "
            "ON CONFLICT (workflow_id) DO UPDATE SET status = excluded.status, "
            "state = coalesce(excluded.state, state), final_state = excluded.final_state, "
            "error = excluded.error, error_type = excluded.error_type, "
            "updated_at = excluded.updated_at, finished_at = excluded.finished_at, "
            "owner = NULL, lease_until = NULL, cancel_requested = 0",
            (workflow_id, status, state, final_state, error, error_type, now, now, now),
        )

    def _move_to_history(self, workflow_id: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO cano_steps SELECT workflow_id, sequence, state, "
            "task_id, kind, output, at FROM cano_checkpoints WHERE workflow_id = ?",
            (workflow_id,),
        )
        self.conn.execute(_DELETE_RUN, (workflow_id,))

    def _record_rows(
        self, where: str, params: tuple[Any, ...], *, live: bool = True
    ) -> list[RunInfo]:
        """Records matching ``where``; with ``live``, a running run's state is its log's last
        row (without, the record's own column: enough for a run just enqueued)."""
        last_row = (
            "(SELECT state FROM cano_checkpoints c WHERE c.workflow_id = r.workflow_id "
            " ORDER BY sequence DESC LIMIT 1), "
            "(SELECT at FROM cano_checkpoints c WHERE c.workflow_id = r.workflow_id "
            " ORDER BY sequence DESC LIMIT 1) "
            if live
            else "NULL, NULL "
        )
        rows = self.conn.execute(
            f"SELECT {_RECORD_COLUMNS}, {last_row}FROM cano_runs r {where}",
            params,
        ).fetchall()
        infos = []
        for row in rows:
            record = Record.from_columns(row)
            last = None if row[17] is None else (row[17], row[18] or 0.0)
            infos.append(record.info(last))
        return infos

    def _get(self, workflow_id: str, _now: float) -> RunInfo | None:
        found = self._record_rows("WHERE workflow_id = ?", (workflow_id,))
        return found[0] if found else None

    def _infos(self, args: tuple[Any, ...], _now: float) -> list[RunInfo]:
        statuses, name, since, limit, offset = args
        clauses, params = [], []
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(sorted(s.value for s in statuses))
        if name is not None:
            clauses.append("workflow_name = ?")
            params.append(name)
        if since is not None:
            clauses.append("created_at >= ?")
            params.append(since)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = " ORDER BY created_at DESC, workflow_id DESC LIMIT ? OFFSET ?"
        return self._record_rows(where + order, (*params, limit, offset))

    def _steps(self, workflow_id: str, _now: float) -> list[StepInfo]:
        rows = self.conn.execute(
            "SELECT sequence, state, task_id, kind, output, at FROM cano_steps "
            "WHERE workflow_id = ? UNION ALL "
            "SELECT sequence, state, task_id, kind, output, at FROM cano_checkpoints "
            "WHERE workflow_id = ? ORDER BY sequence",
            (workflow_id, workflow_id),
        ).fetchall()
        finished = self.conn.execute(
            "SELECT finished_at FROM cano_runs WHERE workflow_id = ?", (workflow_id,)
        ).fetchone()
        return build_steps(rows, finished[0] if finished else None)

    def _prune(self, args: tuple[Any, ...], _now: float) -> int:
        before, statuses = args
        if not statuses:
            return 0
        marks = ", ".join("?" for _ in statuses)
        ids = [
            r[0]
            for r in self.conn.execute(
                f"SELECT workflow_id FROM cano_runs WHERE status IN ({marks}) "
                "AND finished_at IS NOT NULL AND finished_at < ?",
                (*sorted(s.value for s in statuses), before),
            )
        ]
        for workflow_id in ids:
            for table in ("cano_runs", "cano_steps", "cano_checkpoints", "cano_signals"):
                self.conn.execute(f"DELETE FROM {table} WHERE workflow_id = ?", (workflow_id,))
        return len(ids)

    # ----- the queue: enqueue, claims, leases, cancellation ----------------------------

    def _enqueue(self, args: tuple[Any, ...], now: float) -> RunInfo | None:
        workflow_id, name, initial, data, queue_name, not_before, priority = args
        inserted = self.conn.execute(
            "INSERT INTO cano_runs (workflow_id, workflow_name, workflow_version, status, "
            "state, input, queue, attempts, created_at, updated_at, initial, priority, "
            "not_before) VALUES (?, ?, 0, 'PENDING', ?, ?, ?, 0, ?, ?, ?, ?, ?) "
            "ON CONFLICT (workflow_id) DO NOTHING",
            (workflow_id, name, initial, data, queue_name, now, now, initial, priority, not_before),
        ).rowcount
        if inserted:  # the record is what was just written: no need to read it back
            return Record.pending(workflow_id, name, initial, data, queue_name, now).info()
        return self._get(workflow_id, now)  # it existed: as it stands

    def _claim(self, args: tuple[Any, ...], now: float) -> list[Claim]:
        worker, names, queues, limit, lease = args
        if limit <= 0 or not names or not queues:
            return []
        name_marks = ", ".join("?" for _ in names)
        queue_marks = ", ".join("?" for _ in queues)
        columns = (
            "workflow_id, workflow_name, initial, input, queue, lease_epoch, attempts, "
            "EXISTS (SELECT 1 FROM cano_checkpoints c WHERE c.workflow_id = r.workflow_id)"
        )
        wanted = f"workflow_name IN ({name_marks}) AND queue IN ({queue_marks})"
        # Two index lookups: due PENDING runs, and RUNNING runs whose lease expired.
        pending = self.conn.execute(
            f"SELECT {columns}, priority, created_at FROM cano_runs r WHERE status = 'PENDING' "
            f"AND {wanted} AND (not_before IS NULL OR not_before <= ?) "
            "ORDER BY priority, created_at LIMIT ?",
            (*names, *queues, now, limit * 4 + 16),
        ).fetchall()
        woken = self.conn.execute(
            f"SELECT {columns}, priority, created_at FROM cano_runs r WHERE status = 'WAITING' "
            f"AND not_before <= ? AND {wanted} ORDER BY priority, created_at LIMIT ?",
            (now, *names, *queues, limit * 4 + 16),
        ).fetchall()
        orphaned = self.conn.execute(
            f"SELECT {columns}, priority, created_at FROM cano_runs r WHERE status = 'RUNNING' "
            f"AND lease_until < ? AND owner IS NOT NULL AND {wanted} LIMIT ?",
            (now, *names, *queues, limit * 4 + 16),
        ).fetchall()
        everything = pending + woken + orphaned
        candidates = [row[:8] for row in sorted(everything, key=lambda r: (r[8], r[9]))]
        caps = dict(self.conn.execute("SELECT name, concurrency FROM cano_queues").fetchall())
        busy: dict[str, int] = {}
        claims: list[Claim] = []
        for workflow_id, name, initial, data, queue_name, epoch, attempts, has_log in candidates:
            if len(claims) >= limit:
                break
            cap = caps.get(queue_name)
            if cap is not None:
                if queue_name not in busy:
                    busy[queue_name] = self.conn.execute(
                        "SELECT count(*) FROM cano_runs WHERE queue = ? AND status = 'RUNNING' "
                        "AND lease_until >= ?",
                        (queue_name, now),
                    ).fetchone()[0]
                if busy[queue_name] >= cap:
                    continue
                busy[queue_name] += 1
            claims.append(
                Claim(
                    workflow_id=workflow_id,
                    workflow_name=name,
                    initial=initial,
                    input=None if data is None else orjson.loads(data),
                    epoch=epoch + 1,
                    resume=bool(has_log),
                    attempt=attempts + 1,
                )
            )
        if claims:  # one statement for the whole claim
            self.conn.execute(
                "UPDATE cano_runs SET status = 'RUNNING', owner = ?, lease_until = ?, "
                "lease_epoch = lease_epoch + 1, updated_at = ? "
                f"WHERE workflow_id IN ({', '.join('?' for _ in claims)})",
                (worker, now + lease, now, *(c.workflow_id for c in claims)),
            )
        return claims

    def _renew(self, args: tuple[Any, ...], now: float) -> tuple[list[str], list[str]]:
        """Extends the leases still held, in one statement; returns (lost, cancel requested).
        A run that just ended under its lease is neither."""
        worker, held, lease = args
        if not held:
            return [], []
        pairs = ", ".join("(?, ?)" for _ in held)
        flat = [v for pair in held for v in pair]
        self.conn.execute(
            "UPDATE cano_runs SET lease_until = ? WHERE owner = ? AND status = 'RUNNING' "
            f"AND (workflow_id, lease_epoch) IN (VALUES {pairs})",
            (now + lease, worker, *flat),
        )
        found = {
            run_id: (epoch, status, owner, flag)
            for run_id, epoch, status, owner, flag in self.conn.execute(
                "SELECT workflow_id, lease_epoch, status, owner, cancel_requested FROM cano_runs "
                f"WHERE workflow_id IN ({', '.join('?' for _ in held)})",
                [run_id for run_id, _ in held],
            )
        }
        return renewal_outcome(worker, held, found)

    def _release(self, args: tuple[Any, ...], now: float) -> None:
        """Gives leases back (stop): another worker may take the runs over at once."""
        worker, held = args
        for workflow_id, epoch in held:
            self.conn.execute(
                "UPDATE cano_runs SET lease_until = ?, updated_at = ? WHERE workflow_id = ? "
                "AND owner = ? AND lease_epoch = ? AND status = 'RUNNING'",
                (now - 1, now, workflow_id, worker, epoch),
            )

    def _cancel(self, workflow_id: str, now: float) -> RunInfo | None:
        self.conn.execute(
            "UPDATE cano_runs SET status = 'CANCELLED', finished_at = ?, updated_at = ?, "
            "error_type = 'WorkflowCancelledError', error = 'cancelled before it started' "
            "WHERE workflow_id = ? AND status IN ('PENDING', 'WAITING')",
            (now, now, workflow_id),
        )
        self.conn.execute(
            "UPDATE cano_runs SET cancel_requested = 1 WHERE workflow_id = ? "
            "AND status = 'RUNNING'",
            (workflow_id,),
        )
        return self._get(workflow_id, now)

    def _send_signal(self, args: tuple[Any, ...], now: float) -> bool:
        workflow_id, name, payload, dedup_key = args
        if not self.conn.execute(
            "INSERT OR IGNORE INTO cano_signals (workflow_id, name, payload, dedup_key, "
            "sent_at) VALUES (?, ?, ?, ?, ?)",
            (workflow_id, name, payload, dedup_key, now),
        ).rowcount:
            return False
        # A run parked for this signal is due now.
        self.conn.execute(
            "UPDATE cano_runs SET not_before = ? WHERE workflow_id = ? AND status = 'WAITING' "
            "AND waiting_for = ?",
            (now, workflow_id, name),
        )
        return True

    def _park(self, args: tuple[Any, ...], now: float) -> None:
        workflow_id, state, signal, wake_at, fence = args
        signalled = self.conn.execute(
            "SELECT 1 FROM cano_signals WHERE workflow_id = ? AND name = ? AND consumed_by IS NULL",
            (workflow_id, signal),
        ).fetchone()
        updated = self.conn.execute(
            "UPDATE cano_runs SET status = 'WAITING', owner = NULL, lease_until = NULL, "
            "state = ?, waiting_for = ?, wake_at = ?, not_before = ?, updated_at = ? "
            "WHERE workflow_id = ? AND owner = ? AND lease_epoch = ? AND status = 'RUNNING'",
            (state, signal, wake_at, now if signalled else wake_at, now, workflow_id, *fence),
        ).rowcount
        if not updated:
            raise self._lost(workflow_id)

    def _take_signal(self, args: tuple[Any, ...], _now: float) -> tuple[bool, bytes | None]:
        workflow_id, name, token, fence = args
        if (
            fence is not None
            and not self.conn.execute(
                "SELECT 1 FROM cano_runs WHERE workflow_id = ? AND owner = ? AND lease_epoch = ?",
                (workflow_id, *fence),
            ).fetchone()
        ):
            raise self._lost(workflow_id)
        found = self.conn.execute(
            "SELECT id, payload FROM cano_signals WHERE workflow_id = ? AND consumed_by = ?",
            (workflow_id, token),
        ).fetchone()
        if found is None:  # none consumed under this token yet: the oldest of that name
            found = self.conn.execute(
                "SELECT id, payload FROM cano_signals WHERE workflow_id = ? AND name = ? AND "
                "consumed_by IS NULL ORDER BY id LIMIT 1",
                (workflow_id, name),
            ).fetchone()
            if found is None:
                return False, None
            self.conn.execute(
                "UPDATE cano_signals SET consumed_by = ? WHERE id = ?", (token, found[0])
            )
        return True, found[1]

    def _delete(self, workflow_id: str, _now: float) -> None:
        for table in ("cano_runs", "cano_steps", "cano_checkpoints", "cano_signals"):
            self.conn.execute(f"DELETE FROM {table} WHERE workflow_id = ?", (workflow_id,))

    def _set_queue(self, args: tuple[str, int | None], _now: float) -> None:
        name, concurrency = args
        if concurrency is None:
            self.conn.execute("DELETE FROM cano_queues WHERE name = ?", (name,))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO cano_queues (name, concurrency) VALUES (?, ?)",
                (name, concurrency),
            )

    def _load(self, workflow_id: str) -> _Outcome:
        rows: list[CheckpointRow] = []
        for sequence, state, task_id, kind_value, output, version in self.conn.execute(
            _SELECT_RUN, (workflow_id,)
        ):
            kind = _KINDS.get(kind_value)
            if (
                kind is None
                or type(state) is not str
                or type(task_id) is not str
                or type(version) is not int
                or not (output is None or type(output) is bytes)
            ):
                reason = (
                    f"unknown row kind {kind_value!r}"
                    if kind is None
                    else "a column holds a value of the wrong type "
                    f"(state={state!r}, task_id={task_id!r}, output is "
                    f"{type(output).__name__}, workflow_version={version!r})"
                )
                return None, CheckpointError(
                    f"decode checkpoint row at workflow_id={_quoted(workflow_id)} "
                    f"sequence={sequence}: {reason}"
                )
            rows.append(CheckpointRow(workflow_id, sequence, state, task_id, kind, output, version))
        return rows, None

    def _fsync(self) -> CheckpointError | None:
        """Makes every commit durable in "eventual" mode (synchronous=NORMAL skips the WAL
        fsync at commit): syncs the WAL file, then the database file."""
        if self.file is None:
            return None
        for name in (self.file + "-wal", self.file):
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as e:
                return CheckpointError(f"checkpoint store {_quoted(self.label)}: I/O error: {e}")
            try:
                os.fsync(fd)
            except OSError as e:
                return CheckpointError(f"checkpoint store {_quoted(self.label)}: I/O error: {e}")
            finally:
                os.close(fd)
        return None

    def _deliver(self, work: list[_Request], outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, _, loop, future), (value, error) in zip(work, outcomes, strict=True):
            if loop is None:
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            else:
                items = by_loop.get(loop)
                if items is None:
                    items = by_loop[loop] = []
                items.append((future, value, error))
        for loop, items in by_loop.items():
            # A closed loop has nobody left waiting on its futures.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)

    def _fail_rest(
        self,
        error: CheckpointError,
        deliver_first: tuple[list[_Request], list[_Outcome]] | None = None,
    ) -> None:
        """Delivers ``deliver_first`` and fails whatever is still queued (the store is
        closed: ``submit`` refuses new requests, so the queue only shrinks)."""
        work, outcomes = deliver_first if deliver_first is not None else ([], [])
        while True:
            try:
                request = self.queue.get_nowait()
            except queue.Empty:
                break
            work.append(request)
            outcomes.append((None, CheckpointError(str(error))))
        self._deliver(work, outcomes)


class SqliteCheckpointStore:
    """A checkpoint store in a SQLite file that several processes on one machine can share.

    ``path`` is the file, created if missing; ``create=False`` opens an existing store only
    (a missing file, or one without cano's table, raises :class:`cano.CheckpointError`);
    ``":memory:"`` is a private in-memory database.

    ``durability="immediate"`` (default) makes each append durable before it completes
    (``synchronous=FULL``); ``"eventual"`` skips the fsync at commit (``synchronous=NORMAL``:
    a power loss may lose the last rows, a killed process loses nothing; ``flush()`` and
    ``close()`` make everything durable). ``busy_timeout`` is how long, in seconds, a commit
    waits for another process's write lock before failing.

    The methods of :class:`cano.CheckpointStore` return ``asyncio`` futures and need a
    running event loop. ``close()`` (or leaving a ``with``/``async with`` block) flushes
    and releases the file; afterwards every method raises :class:`cano.CheckpointError`.
    """

    __slots__ = ("__weakref__", "_engine", "_finalizer", "_lock", "_put")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "immediate",
        busy_timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        if not isinstance(durability, str) or durability not in _DURABILITY:
            raise ConfigurationError(
                f'SqliteCheckpointStore durability= must be "immediate" or "eventual", '
                f"got {durability!r}"
            )
        busy_timeout = seconds(busy_timeout, "SqliteCheckpointStore(busy_timeout)")
        try:
            label = os.fspath(path)
        except TypeError:
            label = None
        if not isinstance(label, str) or not label or "\x00" in label:
            raise ConfigurationError(
                "a store path must be a non-empty str or os.PathLike of str without NUL bytes, "
                f"got {path!r}"
            )
        if not create and label != ":memory:" and not Path(label).is_file():
            raise CheckpointError(
                f"checkpoint store {_quoted(label)}: cannot open the file: it does not exist"
            )
        engine = _Engine(label, durability, float(busy_timeout), create)
        self._engine = engine
        self._lock = engine.lock
        self._put = engine.queue.put
        # Closes (and so flushes) a store that is dropped or still open at interpreter exit.
        self._finalizer = weakref.finalize(self, engine.close)

    # ----- the CheckpointStore protocol -------------------------------------------------

    def append(self, row: CheckpointRow) -> asyncio.Future[None]:
        """Appends ``row``; the future completes once the row is committed (and on disk,
        with ``durability="immediate"``). A row already stored at the same
        ``(workflow_id, sequence)`` — by this process or another — fails it with
        :class:`cano.CheckpointError` and is kept."""
        return self._submit(_APPEND, (row_fields(row), FENCE.get()))

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
        """``append`` without building a ``CheckpointRow`` (the engine's fast path)."""
        if kind not in _KINDS:
            raise CheckpointError(
                f"unknown checkpoint row kind {kind} (0 state entry, 1 compensation, 2 step cursor)"
            )
        return self._submit(
            _APPEND, ((workflow_id, sequence, state, task_id, kind, output, version), FENCE.get())
        )

    def load_run(self, workflow_id: str) -> asyncio.Future[list[CheckpointRow]]:
        """Every row of ``workflow_id``, ascending by sequence (``[]`` if none)."""
        check_workflow_id(workflow_id)
        return self._submit(_LOAD, workflow_id)

    def clear(self, workflow_id: str) -> asyncio.Future[None]:
        """Removes every row of ``workflow_id``; an unknown id is not an error."""
        check_workflow_id(workflow_id)
        return self._submit(_CLEAR, workflow_id)

    def list_runs(self) -> asyncio.Future[list[str]]:
        """The workflow ids that have rows, sorted."""
        return self._submit(_LIST, None)

    def runs_summary(self) -> asyncio.Future[list[RunSummary]]:
        """One dict per run, sorted by id: ``{"workflow_id", "rows", "last_state",
        "last_sequence"}`` (what ``cano runs list`` shows)."""
        return self._submit(_SUMMARY_OP, None)

    # ----- run records (cano.runs.RunRegistry) ------------------------------------------

    def run_started(
        self,
        workflow_id: str,
        workflow_name: str | None,
        workflow_version: int,
        state: str,
        resumed: bool,
    ) -> asyncio.Future[None]:
        """Records that the run starts (RUNNING), or starts again after a resume."""
        fence = FENCE.get()
        written = self._submit(
            _STARTED, (workflow_id, workflow_name, workflow_version, state, resumed, fence)
        )
        if fence is None:
            return written  # may be refused (a run a worker holds): the run waits for it
        # A worker's run: its first row, fenced too, is written after this record and waited
        # for; a refused or failed start fails that row the same way.
        write_behind(written)
        done = written.get_loop().create_future()
        done.set_result(None)
        return done

    def run_ended(self, workflow_id: str, end: RunEnd, clear_log: bool) -> asyncio.Future[None]:
        """Records how the run ended; with ``clear_log`` moves its log into the history in
        the same transaction."""
        return self._submit(_ENDED, (workflow_id, end, clear_log, FENCE.get()))

    def get_run(self, workflow_id: str) -> asyncio.Future[RunInfo | None]:
        """The run's record, or None."""
        return self._submit(_GET, check_workflow_id(workflow_id))

    def list_run_infos(
        self,
        statuses: frozenset[RunStatus] | None,
        workflow_name: str | None,
        since: float | None,
        limit: int,
        offset: int,
    ) -> asyncio.Future[list[RunInfo]]:
        """Records passing the filters, newest first."""
        return self._submit(_INFOS, (statuses, workflow_name, since, limit, offset))

    def run_steps(self, workflow_id: str) -> asyncio.Future[list[StepInfo]]:
        """The run's history (then its live log), ascending."""
        return self._submit(_STEPS, check_workflow_id(workflow_id))

    def delete_run(self, workflow_id: str) -> asyncio.Future[None]:
        """Forgets the run: its record, its history and its log."""
        return self._submit(_DELETE, check_workflow_id(workflow_id))

    def prune_runs(
        self, finished_before: float, statuses: frozenset[RunStatus]
    ) -> asyncio.Future[int]:
        """Removes the records, history and logs of runs that ended before the cutoff."""
        return self._submit(_PRUNE, (finished_before, statuses))

    # ----- the queue (cano.runs.RunQueue) ----------------------------------------------

    def enqueue_run(
        self,
        workflow_id: str,
        workflow_name: str,
        initial: str,
        input: bytes | None,
        queue: str,
        not_before: float | None,
        priority: int,
    ) -> asyncio.Future[RunInfo | None]:
        """Stores a PENDING run unless ``workflow_id`` exists; returns the record."""
        return self._submit(
            _ENQUEUE, (workflow_id, workflow_name, initial, input, queue, not_before, priority)
        )

    def claim_runs(
        self,
        worker_id: str,
        workflow_names: tuple[str, ...],
        queues: tuple[str, ...],
        limit: int,
        lease: float,
    ) -> asyncio.Future[list[Claim]]:
        """Claims up to ``limit`` runs: PENDING ones that are due, and RUNNING ones whose
        lease expired (their worker died), within the queues' caps."""
        return self._submit(_CLAIM, (worker_id, workflow_names, queues, limit, lease))

    def renew_leases(
        self, worker_id: str, held: list[tuple[str, int]], lease: float
    ) -> asyncio.Future[tuple[list[str], list[str]]]:
        """Extends the leases of ``held`` (id, epoch); returns (lost, cancel requested)."""
        return self._submit(_RENEW, (worker_id, held, lease))

    def release_leases(self, worker_id: str, held: list[tuple[str, int]]) -> asyncio.Future[None]:
        """Ends the leases of ``held`` now, so that another worker may take the runs over."""
        return self._submit(_RELEASE, (worker_id, held))

    def cancel_run(self, workflow_id: str) -> asyncio.Future[RunInfo | None]:
        """PENDING/WAITING → CANCELLED now; RUNNING → cancellation requested of its owner."""
        return self._submit(_CANCEL, check_workflow_id(workflow_id))

    def set_queue_cap(self, name: str, concurrency: int | None) -> asyncio.Future[None]:
        """Caps the runs of queue ``name`` RUNNING at once over every worker (None: no cap)."""
        return self._submit(_SET_QUEUE, (name, concurrency))

    # ----- signals (cano.waits.SignalBox) -----------------------------------------------

    def send_signal(
        self, workflow_id: str, name: str, payload: bytes | None, dedup_key: str | None
    ) -> asyncio.Future[bool]:
        """Keeps a signal for the run; False when ``dedup_key`` was already sent."""
        return self._submit(_SEND_SIGNAL, (workflow_id, name, payload, dedup_key))

    def take_signal(
        self, workflow_id: str, name: str, token: str
    ) -> asyncio.Future[tuple[bool, bytes | None]]:
        """The signal consumed under ``token`` (or the oldest unconsumed one of ``name``,
        consumed now, fenced by the run's lease under a Worker)."""
        return self._submit(_TAKE_SIGNAL, (workflow_id, name, token, FENCE.get()))

    def park_run(
        self, workflow_id: str, state: str, signal: str | None, wake_at: float | None
    ) -> asyncio.Future[None]:
        """The run's worker gives it back to wait in ``state`` (fenced by its lease):
        WAITING until a signal ``signal`` arrives or ``wake_at`` passes."""
        return self._submit(_PARK, (workflow_id, state, signal, wake_at, FENCE.get()))

    def _submit(self, op: int, argument: Any) -> asyncio.Future[Any]:
        # The hot path of every call: one future, one queue put under the store's lock.
        engine = self._engine
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if engine.closed or engine.generation != _fork_generation[0]:
                raise engine.refusal()
            self._put((op, argument, loop, future))
        return future

    # ----- lifecycle --------------------------------------------------------------------

    def flush(self) -> None:
        """Blocks until every row appended so far is on disk (cheap with "immediate")."""
        self._engine.call_blocking(_FLUSH)

    def close(self) -> None:
        """Flushes, closes the connection and stops the writer thread. Idempotent.
        Afterwards every method raises :class:`cano.CheckpointError`."""
        self._finalizer.detach()
        self._engine.close()

    @property
    def path(self) -> str:
        """The file this store uses, as given."""
        return self._engine.label

    @property
    def durability(self) -> str:
        """``"immediate"`` or ``"eventual"``."""
        return self._engine.durability

    @property
    def busy_timeout(self) -> float:
        """Seconds a commit waits for another connection's write lock."""
        return self._engine.busy_timeout

    @property
    def closed(self) -> bool:
        """True once ``close()`` (or leaving a ``with`` block) closed the store."""
        return self._engine.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Closes without blocking the loop."""
        self._finalizer.detach()
        await self._engine.close_async()

    def __repr__(self) -> str:
        closed = ", closed" if self._engine.closed else ""
        return (
            f"SqliteCheckpointStore({self._engine.label!r}, "
            f"durability={self._engine.durability!r}{closed})"
        )


def _owned_elsewhere(label: str, workflow_id: str, owner: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint store {_quoted(label)}: run {_quoted(workflow_id)} is owned by worker "
        f"{_quoted(owner)}, whose lease is current: it cannot be started or resumed here"
    )


_RECORD_OPS: Final[dict[int, Callable[[_Engine, Any, float], Any]]] = {
    _STARTED: _Engine._started,
    _ENDED: _Engine._ended,
    _GET: _Engine._get,
    _INFOS: _Engine._infos,
    _STEPS: _Engine._steps,
    _PRUNE: _Engine._prune,
    _ENQUEUE: _Engine._enqueue,
    _CLAIM: _Engine._claim,
    _RENEW: _Engine._renew,
    _RELEASE: _Engine._release,
    _CANCEL: _Engine._cancel,
    _SET_QUEUE: _Engine._set_queue,
    _DELETE: _Engine._delete,
    _SEND_SIGNAL: _Engine._send_signal,
    _TAKE_SIGNAL: _Engine._take_signal,
    _PARK: _Engine._park,
}
