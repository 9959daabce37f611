"""Hostile values for every public constructor and configuration method.

Each call either succeeds or raises a ``cano`` error whose message names the parameter at
fault; it never panics (``PanicException`` is a ``BaseException``), hangs, or raises a bare
``TypeError``/``OverflowError``/``ValueError``/``AttributeError``.
"""

from __future__ import annotations

import asyncio
import enum
import math
import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import cano
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class S(enum.Enum):
    A = 1
    B = 2


HOSTILE: list[Any] = [
    True,
    False,
    None,
    -1,
    0,
    1,
    3,
    2**31,
    2**32,
    2**63,
    2**64,
    10**400,
    -(10**400),
    1.5,
    -0.0,
    5e-324,
    1e9,
    1.9e19,
    1e30,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    "3",
    "",
    "\x00",
    b"x",
    [],
    {},
    (1,),
    object(),
    timedelta(days=999_999_999),
    timedelta(seconds=-1),
    timedelta(seconds=0.5),
    Decimal("1.5"),
    Fraction(1, 3),
    S.A,
]

values = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.timedeltas(),
)


def _task_config() -> cano.TaskConfig:
    return cano.TaskConfig()


def _workflow() -> cano.Workflow[S]:
    return cano.Workflow.bare()


def _load(workflow_id: Any) -> object:
    return asyncio.run(cano.InMemoryCheckpointStore().load_run(workflow_id))


_TMP: list[str] = []


def _redb(**options: Any) -> object:
    path = f"{_TMP[0]}/fuzz.redb"
    cano.RedbCheckpointStore(path).close()
    store = cano.RedbCheckpointStore(path, **options)
    store.close()
    return store


def _sqlite(**options: Any) -> object:
    store = cano.SqliteCheckpointStore(f"{_TMP[0]}/fuzz.sqlite", **options)
    store.close()
    return store


async def _step(res: cano.Resources) -> S:
    return S.B


def _small() -> cano.Workflow[S]:
    return cano.Workflow.bare().register(S.A, _step).add_exit_state(S.B)


def _orchestrate(**kwargs: Any) -> object:
    initial = kwargs.pop("initial", S.A)

    async def main() -> object:
        return await _small().orchestrate(initial, **kwargs)

    return asyncio.run(main())


def _resume(workflow_id: Any) -> object:
    async def main() -> object:
        wf = _small().with_checkpoint_store(cano.InMemoryCheckpointStore())
        return await wf.resume_from(workflow_id)

    return asyncio.run(main())


def _run_sync(initial: Any) -> object:
    return _small().run_sync(initial)


# (name of the parameter the message must name, call with the hostile value)
TARGETS: list[tuple[str, str, Callable[[Any], object]]] = [
    ("RetryMode.fixed", "retries", lambda v: cano.RetryMode.fixed(v, 1)),
    ("RetryMode.fixed", "delay", lambda v: cano.RetryMode.fixed(1, v)),
    ("RetryMode.exponential", "max_retries", cano.RetryMode.exponential),
    (
        "RetryMode.exponential",
        "base_delay",
        lambda v: cano.RetryMode.exponential(1, base_delay=v),
    ),
    (
        "RetryMode.exponential",
        "multiplier",
        lambda v: cano.RetryMode.exponential(1, multiplier=v),
    ),
    ("RetryMode.exponential", "max_delay", lambda v: cano.RetryMode.exponential(1, max_delay=v)),
    ("RetryMode.exponential", "jitter", lambda v: cano.RetryMode.exponential(1, jitter=v)),
    ("TaskConfig.with_fixed_retry", "retries", lambda v: _task_config().with_fixed_retry(v, 1)),
    ("TaskConfig.with_fixed_retry", "delay", lambda v: _task_config().with_fixed_retry(1, v)),
    (
        "TaskConfig.with_exponential_retry",
        "max_retries",
        lambda v: _task_config().with_exponential_retry(v),
    ),
    (
        "TaskConfig.with_attempt_timeout",
        "timeout",
        lambda v: _task_config().with_attempt_timeout(v),
    ),
    ("TaskConfig.with_retry", "mode", lambda v: _task_config().with_retry(v)),
    (
        "TaskConfig.with_circuit_breaker",
        "breaker",
        lambda v: _task_config().with_circuit_breaker(v),
    ),
    ("TaskConfig.with_rate_limiter", "limiter", lambda v: _task_config().with_rate_limiter(v)),
    (
        "TaskConfig.with_rate_limiter",
        "cost",
        lambda v: _task_config().with_rate_limiter(cano.RateLimiter(5, 1), v),
    ),
    ("TaskConfig.with_retry_on", "exc_types", lambda v: _task_config().with_retry_on(v)),
    ("CircuitPolicy", "failure_threshold", lambda v: cano.CircuitPolicy(failure_threshold=v)),
    ("CircuitPolicy", "reset_timeout", lambda v: cano.CircuitPolicy(reset_timeout=v)),
    ("CircuitPolicy", "half_open_max_calls", lambda v: cano.CircuitPolicy(half_open_max_calls=v)),
    ("CircuitBreaker", "policy", cano.CircuitBreaker),
    ("RateLimiter", "tokens", lambda v: cano.RateLimiter(v, 1)),
    ("RateLimiter", "period", lambda v: cano.RateLimiter(5, v)),
    ("RateLimiter", "burst", lambda v: cano.RateLimiter(5, 1, burst=v)),
    ("RateLimiter.per_second", "n", cano.RateLimiter.per_second),
    ("RateLimiter.try_acquire", "cost", lambda v: cano.RateLimiter(5, 1).try_acquire(v)),
    ("RateLimiter.time_until", "cost", lambda v: cano.RateLimiter(5, 1).time_until(v)),
    ("WindowedRateLimiter", "limit", lambda v: cano.WindowedRateLimiter(v, 1)),
    ("WindowedRateLimiter", "window", lambda v: cano.WindowedRateLimiter(5, v)),
    (
        "WindowedRateLimiter.try_acquire",
        "cost",
        lambda v: cano.WindowedRateLimiter(5, 1).try_acquire(v),
    ),
    (
        "MultiRateLimiter.with_tier",
        "name",
        lambda v: cano.MultiRateLimiter().with_tier(v, cano.RateLimiter(5, 1)),
    ),
    (
        "MultiRateLimiter.with_tier",
        "limiter",
        lambda v: cano.MultiRateLimiter().with_tier("t", v),
    ),
    (
        "MultiRateLimiter.with_tier",
        "cost",
        lambda v: cano.MultiRateLimiter().with_tier("t", cano.RateLimiter(5, 1), v),
    ),
    ("CronSchedule", "expr", cano.CronSchedule),
    ("CronSchedule.next_after", "ts", lambda v: cano.CronSchedule("0 * * * * *").next_after(v)),
    ("BackoffPolicy", "initial", lambda v: cano.BackoffPolicy(initial=v)),
    ("BackoffPolicy", "multiplier", lambda v: cano.BackoffPolicy(multiplier=v)),
    ("BackoffPolicy", "max_delay", lambda v: cano.BackoffPolicy(max_delay=v)),
    ("BackoffPolicy", "jitter", lambda v: cano.BackoffPolicy(jitter=v)),
    ("BackoffPolicy", "streak_limit", lambda v: cano.BackoffPolicy(streak_limit=v)),
    ("BackoffPolicy.with_trip", "streak_limit", cano.BackoffPolicy.with_trip),
    ("BackoffPolicy.compute_delay", "streak", lambda v: cano.BackoffPolicy().compute_delay(v)),
    ("BackoffPolicy.is_tripped", "streak", lambda v: cano.BackoffPolicy().is_tripped(v)),
    ("Pending", "delay", cano.Pending),
    (
        "PollErrorPolicy.retry_on_error",
        "max_errors",
        cano.PollErrorPolicy.retry_on_error,
    ),
    ("StreamWindow.count", "n", cano.StreamWindow.count),
    ("StreamWindow.duration", "d", cano.StreamWindow.duration),
    (
        "StreamErrorPolicy.retry_on_error",
        "max_errors",
        cano.StreamErrorPolicy.retry_on_error,
    ),
    ("JoinStrategy.quorum", "n", cano.JoinStrategy.quorum),
    ("JoinStrategy.percentage", "p", cano.JoinStrategy.percentage),
    ("JoinConfig", "strategy", lambda v: cano.JoinConfig(v, S.B)),
    ("JoinConfig", "timeout", lambda v: cano.JoinConfig(cano.JoinStrategy.ALL, S.B, timeout=v)),
    ("Workflow", "resources", cano.Workflow),
    ("Workflow.with_workflow_id", "workflow_id", lambda v: _workflow().with_workflow_id(v)),
    ("Workflow.with_total_timeout", "limit", lambda v: _workflow().with_total_timeout(v)),
    (
        "Workflow.with_compensation_timeout",
        "limit",
        lambda v: _workflow().with_compensation_timeout(v),
    ),
    ("Workflow.add_exit_state", "state", lambda v: _workflow().add_exit_state(v)),
    ("Workflow.with_checkpoint_store", "store", lambda v: _workflow().with_checkpoint_store(v)),
    ("Workflow.with_workflow_version", "version", lambda v: _workflow().with_workflow_version(v)),
    ("Workflow.with_max_transitions", "n", lambda v: _workflow().with_max_transitions(v)),
    ("Scheduler.every", "interval", lambda v: cano.Scheduler().every("f", _workflow(), S.A, v)),
    ("Scheduler.every", "flow_id", lambda v: cano.Scheduler().every(v, _workflow(), S.A, 1)),
    ("Scheduler.cron", "expr", lambda v: cano.Scheduler().cron("f", _workflow(), S.A, v)),
    (
        "Scheduler.set_backoff",
        "policy",
        lambda v: cano.Scheduler().manual("f", _workflow(), S.A).set_backoff("f", v),
    ),
    ("Resources.insert", "key", lambda v: cano.Resources().insert(v, 1)),
    ("InMemoryCheckpointStore.load_run", "workflow_id", _load),
    ("RedbCheckpointStore", "path", cano.RedbCheckpointStore),
    ("RedbCheckpointStore", "durability", lambda v: _redb(durability=v)),
    ("RedbCheckpointStore", "read_only", lambda v: _redb(read_only=v)),
    ("RedbCheckpointStore", "create", lambda v: _redb(create=v)),
    ("RedbCheckpointStore", "repair", lambda v: _redb(repair=v)),
    ("SqliteCheckpointStore", "path", cano.SqliteCheckpointStore),
    ("SqliteCheckpointStore", "durability", lambda v: _sqlite(durability=v)),
    ("SqliteCheckpointStore", "busy_timeout", lambda v: _sqlite(busy_timeout=v)),
    ("Workflow.orchestrate", "workflow_id", lambda v: _orchestrate(workflow_id=v)),
    ("Workflow.orchestrate", "initial", lambda v: _orchestrate(initial=v)),
    ("Workflow.orchestrate", "cancel", lambda v: _orchestrate(cancel=v)),
    ("Workflow.resume_from", "workflow_id", _resume),
    ("Workflow.run_sync", "initial", _run_sync),
]


_RUST_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\", '"': '\\"', "\0": "\\0"}


def _rust_debug(text: str) -> str:
    """How Rust's ``{:?}`` shows a str, without its quotes (how the redb store names paths)."""
    return "".join(
        _RUST_ESCAPES.get(c, c if c.isprintable() else f"\\u{{{ord(c):x}}}") for c in text
    )


def _fault(where: str, param: str, call: Callable[[Any], object], value: Any) -> str | None:
    """What is wrong with the answer to ``call(value)``, or None if it is a fine answer."""
    try:
        call(value)
    except cano.CanoError as err:
        message = str(err)
        named = (
            param in message
            or param.replace("_", " ") in message
            or (
                isinstance(value, str)
                and any(
                    q in message
                    for q in (repr(value), f"'{value}'", f'"{value}"', f'"{_rust_debug(value)}"')
                )
            )
        )
        if not named:
            return f"{type(err).__name__} not naming {param!r}: {message}"
    except BaseException as err:
        return f"{type(err).__module__}.{type(err).__name__}: {err}"
    return None


def _check(where: str, param: str, call: Callable[[Any], object], value: Any) -> None:
    fault = _fault(where, param, call, value)
    assert fault is None, f"{where}({param}={value!r:.60}): {fault}"


@pytest.fixture(autouse=True)
def _tmp(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)  # a relative store path lands here, not in the checkout
    _TMP[:] = [str(tmp_path)]
    yield
    _TMP.clear()


@pytest.mark.parametrize(
    ("where", "param", "call"), TARGETS, ids=[f"{t[0]}:{t[1]}" for t in TARGETS]
)
def test_hostile_values_give_named_errors(
    where: str, param: str, call: Callable[[Any], object]
) -> None:
    faults = [
        f"{param}={value!r:.60}: {fault:.200}"
        for value in HOSTILE
        if (fault := _fault(where, param, call, value)) is not None
    ]
    assert not faults, f"{where}:\n" + "\n".join(faults)


@pytest.mark.parametrize(
    ("where", "param", "call"), TARGETS, ids=[f"{t[0]}:{t[1]}" for t in TARGETS]
)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same values on every CI run; explore locally with more examples
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=values)
def test_generated_values_give_named_errors(
    where: str, param: str, call: Callable[[Any], object], value: Any
) -> None:
    _check(where, param, call, value)


# Values that used to be accepted silently (clamped, saturated or coerced) are refused.
LAX: list[tuple[str, Callable[[], object]]] = [
    ("retries", lambda: cano.RetryMode.fixed(True, 1)),
    ("max_retries", lambda: cano.RetryMode.exponential(True)),
    ("multiplier", lambda: cano.RetryMode.exponential(3, multiplier=-1)),
    ("multiplier", lambda: cano.RetryMode.exponential(3, multiplier="2")),
    ("jitter", lambda: cano.RetryMode.exponential(3, jitter=1e308)),
    ("base_delay", lambda: cano.RetryMode.exponential(3, base_delay=math.inf)),
    ("delay", lambda: cano.RetryMode.fixed(1, 1e30)),
    ("delay", lambda: cano.TaskConfig().with_fixed_retry(1, math.inf)),
    ("timeout", lambda: cano.TaskConfig().with_attempt_timeout(math.inf)),
    ("timeout", lambda: cano.TaskConfig().with_attempt_timeout(1e30)),
    ("resources", lambda: cano.Workflow({})),  # type: ignore[arg-type]
    ("resources", lambda: cano.Workflow(resources=5)),  # type: ignore[arg-type]
    ("StreamWindow.count(n)", lambda: cano.StreamWindow.count(0)),
    ("streak_limit", lambda: cano.BackoffPolicy(streak_limit=0)),
    ("max_errors", lambda: cano.PollErrorPolicy.retry_on_error(math.nan)),  # type: ignore[arg-type]
    ("max_errors", lambda: cano.PollErrorPolicy.retry_on_error(math.inf)),  # type: ignore[arg-type]
    ("max_errors", lambda: cano.PollErrorPolicy.retry_on_error(1.5)),  # type: ignore[arg-type]
    ("max_errors", lambda: cano.PollErrorPolicy.retry_on_error(True)),
    ("max_errors", lambda: cano.PollErrorPolicy.retry_on_error("3")),  # type: ignore[arg-type]
    ("delay", lambda: cano.Pending(math.inf)),
    ("reset_timeout", lambda: cano.CircuitPolicy(reset_timeout=math.inf)),
    ("period", lambda: cano.RateLimiter(1, 1e30)),
    ("window", lambda: cano.WindowedRateLimiter(1, math.inf)),
    ("interval", lambda: cano.Scheduler().every("f", _workflow(), S.A, 1e30)),
    ("workflow_id", lambda: _orchestrate(workflow_id="")),
    ("workflow_id", lambda: _orchestrate(workflow_id=5)),
    ("workflow_id", lambda: _load(5)),
    ("durability", lambda: _redb(durability=None)),
]


@pytest.mark.parametrize(("param", "call"), LAX, ids=[f"{i}-{p}" for i, (p, _) in enumerate(LAX)])
def test_lax_values_are_refused(param: str, call: Callable[[], object]) -> None:
    with pytest.raises(cano.CanoError, match=re.escape(param)):
        call()


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.timedeltas(),
    )
)
def test_a_duration_is_accepted_exactly_when_it_is_finite_and_in_range(value: Any) -> None:
    secs = value.total_seconds() if isinstance(value, timedelta) else float(value)
    ok = math.isfinite(secs) and 0 <= secs <= 1e9
    try:
        cano.Pending(value)
        accepted = True
    except cano.ConfigurationError as err:
        assert "Pending(delay)" in str(err)
        accepted = False
    assert accepted == ok


@given(st.one_of(st.integers(), st.booleans(), st.floats()))
def test_a_count_is_accepted_exactly_when_it_is_an_int_in_range(value: Any) -> None:
    ok = type(value) is int and 0 <= value < 2**32
    try:
        mode = cano.RetryMode.fixed(value, 0)
    except cano.ConfigurationError as err:
        assert "retries" in str(err)
        assert not ok
    else:
        assert ok
        assert mode.max_attempts == value + 1
