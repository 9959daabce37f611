"""What the engine logs on ``logging.getLogger("cano")`` for an operator."""

from __future__ import annotations

import enum
import logging

import cano
import pytest


class S(enum.Enum):
    A = enum.auto()
    DONE = enum.auto()


def records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, object, object]]:
    return [
        (r.levelno, r.getMessage(), getattr(r, "workflow_id", None), getattr(r, "state", None))
        for r in caplog.records
        if r.name == "cano"
    ]


async def test_a_durable_run_logs_its_start_retries_and_end(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}

    async def flaky(res: cano.Resources) -> S:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("flaky")
        return S.DONE

    wf = (
        cano.Workflow[S]
        .bare()
        .register(
            S.A, cano.task(name="flaky", config=cano.TaskConfig().with_fixed_retry(1, 0))(flaky)
        )
        .add_exit_state(S.DONE)
        .with_checkpoint_store(cano.InMemoryCheckpointStore())
    )
    caplog.set_level(logging.DEBUG, logger="cano")
    assert await wf.orchestrate(S.A, workflow_id="logged") is S.DONE
    assert records(caplog) == [
        (logging.INFO, "run 'logged' started in state A", "logged", "A"),
        (
            logging.DEBUG,
            "task 'flaky' failed in state A (attempt 1), retrying in 0.000s: flaky",
            "logged",
            "A",
        ),
        (logging.INFO, "run 'logged' completed in state DONE", "logged", "DONE"),
    ]
    assert all(hasattr(r, "attempt") for r in caplog.records if r.name == "cano")
    assert capsys.readouterr().out == ""  # the library prints nothing


async def test_a_failed_and_a_cancelled_run_say_so(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(res: cano.Resources) -> S:
        raise ValueError("no stock")

    wf = (
        cano.Workflow[S]
        .bare()
        .register(S.A, cano.task(config=cano.TaskConfig.minimal())(broken))
        .add_exit_state(S.DONE)
        .with_checkpoint_store(cano.InMemoryCheckpointStore())
    )
    caplog.set_level(logging.INFO, logger="cano")
    with pytest.raises(cano.TaskError):
        await wf.orchestrate(S.A, workflow_id="broken")
    [_, (level, message, wid, state)] = records(caplog)
    assert (level, wid, state) == (logging.INFO, "broken", "A")
    assert message.startswith("run 'broken' failed in state A: TaskError: ")
    caplog.clear()
    token, handle = cano.CancellationToken.new()
    handle.cancel()
    with pytest.raises(cano.WorkflowCancelledError):
        await wf.orchestrate(S.A, workflow_id="stopped", cancel=token)
    assert any("run 'stopped' cancelled in state A" in m for _, m, _, _ in records(caplog))


async def test_runs_without_a_store_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def done(res: cano.Resources) -> S:
        return S.DONE

    caplog.set_level(logging.DEBUG, logger="cano")
    wf = cano.Workflow[S].bare().register(S.A, done).add_exit_state(S.DONE)
    assert await wf.orchestrate(S.A) is S.DONE
    assert records(caplog) == []
