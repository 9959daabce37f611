"""The embedded stores under damage, full disks and hostile paths (issue 10).

The corruption suite damages a store's files the way disks and people do — bit flips,
truncation, zeroed pages, deleted logs — and accepts only two outcomes: the exact rows, or a
named ``CheckpointError`` with the damaged file left in place for inspection. Never a
``PanicException`` (a ``BaseException`` that ``except Exception`` misses), never a wrong row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cano
import pytest
from cano.store import CheckpointRow, RedbCheckpointStore, RowKind
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROWS = 12


def row(wid: str, seq: int) -> CheckpointRow:
    out = f"cursor-{wid}-{seq}".encode() if seq % 3 == 0 else None
    kind = RowKind.STEP_CURSOR if out is not None else RowKind.STATE_ENTRY
    return CheckpointRow(wid, seq, f"S{seq}", f"task-{seq}", kind, out, 1)


EXPECTED = {wid: [row(wid, s) for s in range(ROWS)] for wid in ("a", "b")}


async def fill(store: RedbCheckpointStore) -> None:
    for seq in range(ROWS):
        for wid in EXPECTED:
            await store.append(row(wid, seq))


def load(store: RedbCheckpointStore, wid: str) -> list[CheckpointRow]:
    async def read() -> list[CheckpointRow]:
        return await store.load_run(wid)

    return asyncio.run(read())


def crash_image(source: Path, target_dir: Path) -> Path:
    """What the disk holds at this instant (the store still open): its file and its log."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / source.name
    shutil.copyfile(source, target)
    log = Path(f"{source}.wal")
    if log.exists():
        shutil.copyfile(log, f"{target}.wal")
    return target


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two pristine images: a crashed store (rows in its log) and a cleanly closed one."""
    base = tmp_path_factory.mktemp("images")
    path = base / "live" / "runs.redb"
    path.parent.mkdir()

    async def make() -> dict[str, Path]:
        store = RedbCheckpointStore(path)
        await fill(store)
        store.flush()
        crashed = crash_image(path, base / "crashed")
        store.close()
        closed = crash_image(path, base / "closed")
        return {"crashed": crashed, "closed": closed}

    yield asyncio.run(make())


def copy_image(image: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    target = where / image.name
    shutil.copyfile(image, target)
    if Path(f"{image}.wal").exists():
        shutil.copyfile(f"{image}.wal", f"{target}.wal")
    return target


def outcome(path: Path) -> dict[str, list[CheckpointRow]] | cano.CheckpointError:
    """Everything the store says after the damage: its rows, or the named error."""

    async def read() -> dict[str, list[CheckpointRow]]:
        with RedbCheckpointStore(path) as store:
            listed = await store.list_runs()
            rows = {wid: await store.load_run(wid) for wid in listed}
            await store.runs_summary()
            return rows

    try:
        return asyncio.run(read())
    except cano.CheckpointError as err:
        return err


def assert_exact_or_named(path: Path, result: object, damaged_file: Path) -> None:
    if isinstance(result, cano.CheckpointError):
        text = str(result)
        assert str(path) in text or str(damaged_file) in text, text
        assert damaged_file.exists() or "missing" in text, "the damaged file is kept"
    else:
        assert result == EXPECTED


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_bit_flips_in_the_database_file_give_the_rows_or_a_named_error(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = copy_image(images["closed"], tmp_path_factory.mktemp("flip"))
    size = path.stat().st_size
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, size - 1))
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(bytes(raw))
    assert_exact_or_named(path, outcome(path), path)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_zeroed_pages_of_the_database_file_give_the_rows_or_a_named_error(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = copy_image(images["closed"], tmp_path_factory.mktemp("zero"))
    raw = bytearray(path.read_bytes())
    page = data.draw(st.integers(0, len(raw) // 4096 - 1))
    raw[page * 4096 : (page + 1) * 4096] = bytes(4096)
    path.write_bytes(bytes(raw))
    assert_exact_or_named(path, outcome(path), path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damage_to_the_log_gives_the_rows_or_a_named_error_and_keeps_the_log(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = copy_image(images["crashed"], tmp_path_factory.mktemp("wal"))
    log = Path(f"{path}.wal")
    raw = bytearray(log.read_bytes())
    used = max(i for i, b in enumerate(raw) if b) + 1  # the records; zeros after them
    damage = data.draw(st.sampled_from(["flip", "flips", "zero-page", "truncate", "delete"]))
    if damage == "flip":
        raw[data.draw(st.integers(0, used - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif damage == "flips":
        for _ in range(data.draw(st.integers(2, 8))):
            raw[data.draw(st.integers(0, used - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif damage == "zero-page":
        page = data.draw(st.integers(0, (used - 1) // 4096))
        raw[page * 4096 : (page + 1) * 4096] = bytes(4096)
    elif damage == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    if damage == "delete":
        log.unlink()
    else:
        log.write_bytes(bytes(raw))
    before = None if damage == "delete" else bytes(raw)
    result = outcome(path)
    assert_exact_or_named(path, result, log)
    if isinstance(result, cano.CheckpointError):
        assert "repair=True" in str(result), str(result)
        if before is not None:
            assert log.read_bytes() == before, "a damaged log is left exactly as it was"


def test_repair_replays_what_is_intact_and_keeps_the_damaged_log(
    images: dict[str, Path], tmp_path: Path
) -> None:
    path = copy_image(images["crashed"], tmp_path)
    log = Path(f"{path}.wal")
    log.unlink()
    with pytest.raises(cano.CheckpointError, match="missing"):
        RedbCheckpointStore(path)
    with RedbCheckpointStore(path, repair=True) as store:
        report = store.repair_report
        assert report is not None
        assert report["problems"], report
    # Repaired: it opens normally from now on.
    RedbCheckpointStore(path).close()


def test_a_panic_inside_redb_is_a_checkpoint_error_and_prints_nothing(tmp_path: Path) -> None:
    # A file that looks like redb but is garbage after the magic bytes.
    path = tmp_path / "garbage.redb"
    path.write_bytes(b"redb\x1a\x0a\xa9\x0d\x0a" + os.urandom(20_000))
    code = (
        "import cano, sys\n"
        "try:\n"
        f"    cano.RedbCheckpointStore({str(path)!r})\n"
        "except cano.CheckpointError as e:\n"
        "    print('NAMED', type(e).__name__)\n"
        "except BaseException as e:\n"
        "    print('OTHER', type(e).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("NAMED"), done.stdout + done.stderr
    assert "panicked" not in done.stderr and "RUST_BACKTRACE" not in done.stderr, done.stderr


# ----- files that are not stores ---------------------------------------------------------------


def test_an_empty_file_is_a_named_error_and_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "empty.redb"
    path.write_bytes(b"")
    with pytest.raises(cano.CheckpointError, match="empty"):
        RedbCheckpointStore(path)
    done = subprocess.run(
        [sys.executable, "-m", "cano", "runs", "list", "--store", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "empty" in done.stderr
    assert path.stat().st_size == 0


def test_a_store_cannot_use_another_open_store_s_log(tmp_path: Path) -> None:
    first = RedbCheckpointStore(tmp_path / "runs.redb")
    try:

        async def one_row() -> None:
            await first.append(row("a", 0))

        asyncio.run(one_row())
        with pytest.raises(cano.CheckpointError):
            RedbCheckpointStore(tmp_path / "runs.redb.wal")
    finally:
        first.close()
    with RedbCheckpointStore(tmp_path / "runs.redb") as again:
        assert load(again, "a") == [row("a", 0)]


@pytest.mark.parametrize("bad", ["runs\x00.db", "", 5, None])
def test_store_paths_are_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(cano.ConfigurationError, match="path"):
        RedbCheckpointStore(bad)  # type: ignore[arg-type]
    with pytest.raises(cano.ConfigurationError, match="path"):
        cano.SqliteCheckpointStore(bad)  # type: ignore[arg-type]
    assert not (Path.cwd() / "runs").exists()


@pytest.mark.parametrize("bad", [None, 1, "fast", b"immediate"])
def test_durability_is_checked_by_both_stores(tmp_path: Path, bad: object) -> None:
    with pytest.raises(cano.ConfigurationError, match="durability"):
        RedbCheckpointStore(tmp_path / "r.redb", durability=bad)  # type: ignore[arg-type]
    with pytest.raises(cano.ConfigurationError, match="durability"):
        cano.SqliteCheckpointStore(tmp_path / "s.db", durability=bad)  # type: ignore[arg-type]


def test_reading_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.redb"
    with pytest.raises(cano.CheckpointError, match="does not exist"):
        RedbCheckpointStore(path, create=False)
    with pytest.raises(cano.CheckpointError, match="does not exist"):
        RedbCheckpointStore(path, read_only=True)
    assert not path.exists()


def test_the_cli_names_the_process_holding_a_live_redb_file(tmp_path: Path) -> None:
    path = tmp_path / "live.redb"
    with RedbCheckpointStore(path):
        done = subprocess.run(
            [sys.executable, "-m", "cano", "runs", "list", "--store", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0]
    if sys.platform == "linux":
        assert f"process {os.getpid()}" in lines[0]
    assert "SQLite" in lines[0]


def test_resume_with_no_rows_names_the_file_it_looked_in(tmp_path: Path) -> None:
    import enum

    class S(enum.Enum):
        A = 1
        B = 2

    async def go() -> S:
        return S.B

    with RedbCheckpointStore(tmp_path / "r.redb") as store:
        wf = cano.Workflow[S].bare().register(S.A, go).add_exit_state(S.B)
        wf.with_checkpoint_store(store)
        with pytest.raises(cano.CheckpointError, match=r"no checkpoint rows .* in '.*r\.redb'"):
            asyncio.run(wf.resume_from("nobody"))


# ----- eventual durability: a bounded loss window ------------------------------------------------


def test_eventual_durability_loses_at_most_its_window_on_a_kill(tmp_path: Path) -> None:
    # The child appends 30,000 rows in eventual mode and is SIGKILLed right after the last
    # acknowledgement. The window is 1 s or 10,000 rows (whichever comes first), one batch
    # (at most 4,096 requests) late: everything but the last 14,096 rows must survive.
    path = tmp_path / "eventual.redb"
    code = (
        "import asyncio, sys, cano\n"
        "from cano.store import CheckpointRow, RowKind\n"
        "async def main():\n"
        f"    store = cano.RedbCheckpointStore({str(path)!r}, durability='eventual')\n"
        "    for seq in range(30_000):\n"
        "        row = CheckpointRow('w', seq, 'S', 't', RowKind.STATE_ENTRY, None, 0)\n"
        "        await store.append(row)\n"
        "    print('DONE', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "DONE"
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    with RedbCheckpointStore(path) as store:
        rows = load(store, "w")
    assert [r.sequence for r in rows] == list(range(len(rows))), "a prefix, no holes"
    assert len(rows) >= 30_000 - 14_096, len(rows)


# ----- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root): " + done.stderr.decode())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    return filler


@pytest.mark.parametrize("durability", ["immediate", "eventual"])
def test_a_full_disk_fails_writes_clearly_and_loses_nothing(
    small_disk: Path, durability: str
) -> None:
    path = small_disk / "runs.redb"
    acknowledged: list[int] = []

    async def write_until_full(store: RedbCheckpointStore) -> cano.CheckpointError:
        for seq in range(200_000):
            try:
                await store.append(
                    CheckpointRow("w", seq, "S" * 200, "t", RowKind.STATE_ENTRY, None, 0)
                )
                if durability == "eventual" and seq % 50 == 0:
                    store.flush()
            except cano.CheckpointError as err:
                return err
            acknowledged.append(seq)
        raise AssertionError("the disk never filled")

    store = RedbCheckpointStore(path, durability=durability)
    filler = fill_disk(small_disk)
    err = asyncio.run(write_until_full(store))
    assert "no space left" in str(err).lower(), str(err)

    async def read() -> list[int]:
        return [r.sequence for r in await store.load_run("w")]

    if durability == "immediate":
        # Reads still work on the full disk, and see every acknowledged row.
        assert asyncio.run(read())[: len(acknowledged)] == acknowledged
    if durability == "immediate":
        store.close()  # closing works on a full disk: the log keeps what redb could not take
    else:
        # Eventual: what was never made durable cannot be now; close says why, and releases
        # the file all the same.
        with pytest.raises(cano.CheckpointError, match=r"(?i)no space left"):
            store.close()
        assert store.closed
    listed = subprocess.run(
        [sys.executable, "-m", "cano", "runs", "list", "--store", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if durability == "immediate":
        assert listed.returncode == 0, listed.stderr
    filler.unlink()
    with RedbCheckpointStore(path) as again:
        survived = load(again, "w")
    got = [r.sequence for r in survived]
    if durability == "immediate":
        assert got[: len(acknowledged)] == acknowledged, "every acknowledged row is there"
    else:
        # Eventual: everything up to the last flush that succeeded.
        assert got == list(range(len(got)))


def test_a_store_left_behind_by_a_failed_run_does_not_lock_its_file(tmp_path: Path) -> None:
    # The failed run's traceback keeps the workflow (and its store) alive in a reference
    # cycle until the cycle collector runs; opening the file again must not have to wait.
    import enum
    import gc

    class S(enum.Enum):
        A = 1
        B = 2

    async def boom() -> S:
        raise RuntimeError("the step failed")

    def run_once() -> None:
        store = RedbCheckpointStore(tmp_path / "c.redb")
        wf = (
            cano.Workflow.bare()
            .register(S.A, cano.task(config=cano.TaskConfig.minimal())(boom))
            .add_exit_state(S.B)
            .with_checkpoint_store(store)
            .with_workflow_id("w")
        )
        with contextlib.suppress(cano.TaskError):
            wf.run_sync(S.A)

    gc.disable()
    try:
        run_once()
        with RedbCheckpointStore(tmp_path / "c.redb") as again:
            assert again.read_only is False
            assert [r.state for r in asyncio.run(_load(again, "w"))] == ["A"]
    finally:
        gc.enable()


async def _load(store: RedbCheckpointStore, wid: str) -> list[CheckpointRow]:
    return await store.load_run(wid)
