"""A throwaway PostgreSQL server on a loopback port, from Debian's packages.

Used by ``.ci/run`` (``python tests/pg_server.py start DIR`` prints a DSN; ``stop DIR``) and,
when ``CANO_PG_DSN`` is not set, by the tests' ``pg_dsn`` fixture. initdb and postgres refuse
to run as root: as root they run as the ``postgres`` user through ``runuser``.

Locally: ``apt-get install -y postgresql`` (any version with ``initdb`` under
``/usr/lib/postgresql/*/bin``), or point ``CANO_PG_DSN`` at a server of your own, e.g.
``CANO_PG_DSN=postgresql://postgres@127.0.0.1:5432/postgres pytest tests/postgres``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: Path) -> str:
    """Creates a cluster in ``directory`` and starts it; returns its DSN."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data, port = directory / "data", _free_port()
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=on -c max_connections=200"
    )
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(directory / "log"),
                "-w",
                "-o",
                options,
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def pg_ctl(directory: Path, *args: str) -> None:
    """Runs ``pg_ctl`` on the cluster in ``directory`` (``restart -m immediate``, say)."""
    bin_dir = binaries()
    assert bin_dir is not None
    # -l: a restarted server writes to the log, not to this pipe (which it would keep open).
    command = [str(bin_dir / "pg_ctl"), "-D", str(directory / "data"), "-l", str(directory / "log")]
    subprocess.run(_as_owner([*command, "-w", *args]), check=True, capture_output=True, timeout=60)


def stop(directory: Path) -> None:
    """Stops the cluster in ``directory`` and removes it."""
    if (directory / "data" / "postmaster.pid").exists():
        pg_ctl(directory, "-m", "immediate", "stop")
    shutil.rmtree(directory, ignore_errors=True)


_started: list[tuple[Path, str]] = []


def test_dsn() -> str | None:
    """The server the tests use: ``$CANO_PG_DSN``, or one started here once per test
    session (stopped at exit); None when neither is available."""
    env = os.environ.get("CANO_PG_DSN")
    if env:
        return env
    if not _started:
        if binaries() is None:
            return None
        directory = Path(tempfile.mkdtemp(prefix="cano-pg-"))
        _started.append((directory, start(directory)))
        os.environ["CANO_PG_DSN"] = _started[0][1]  # child processes of the tests use it too
        atexit.register(stop, directory)
    return _started[0][1]


def test_cluster() -> Path | None:
    """The directory of the tests' server, when it is a throwaway one they may restart: the
    one started here, or ``$CANO_PG_CLUSTER`` (what ``.ci/run`` started); None otherwise."""
    if _started:
        return _started[0][0]
    env = os.environ.get("CANO_PG_CLUSTER")
    return Path(env) if env else None


def fresh_schema() -> str:
    """A schema name of its own for one test (the store creates it)."""
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def postgres_store(schema: str | None = None, **options: Any) -> AsyncIterator[Any]:
    """An open ``PostgresCheckpointStore`` in a fresh schema, dropped afterwards; the test
    is skipped when there is no server."""
    import pytest

    dsn = test_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL: apt-get install -y postgresql, or set CANO_PG_DSN")
    from cano.stores.postgres import PostgresCheckpointStore

    schema = schema or fresh_schema()
    try:
        async with PostgresCheckpointStore(dsn, schema=schema, **options) as store:
            yield store
    finally:
        await drop_schema(dsn, schema)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(where))
    else:
        stop(where)
