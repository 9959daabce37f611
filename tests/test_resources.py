"""Resources: lookup, lifecycle, shared leases, health; and the MemoryStore."""

from __future__ import annotations

import asyncio
import enum
import logging
import pickle
from typing import Any

import pytest
from cano.errors import (
    KeyNotFoundError,
    ResourceError,
    ResourceNotFoundError,
    ResourceTypeError,
    StoreError,
)
from cano.resources import (
    MISSING,
    SPLIT_RESULT_KEY,
    HealthStatus,
    MemoryStore,
    Resource,
    Resources,
)

# --------------------------------------------------------------------------------------------
# helpers


class Tracked:
    """A lifecycle resource recording its setup and teardown in a shared journal."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_setup: bool = False,
        fail_teardown: bool = False,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail_setup = fail_setup
        self.fail_teardown = fail_teardown
        self.gate = gate
        self.ready = False

    async def setup(self) -> None:
        self.journal.append(f"setup {self.name}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_setup:
            raise ConnectionError(f"{self.name} unreachable")
        self.ready = True

    async def teardown(self) -> None:
        self.journal.append(f"teardown {self.name}")
        if self.gate is not None:
            await self.gate.wait()
        self.ready = False
        if self.fail_teardown:
            raise OSError(f"{self.name} would not close")


async def settle() -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


class Key(enum.Enum):
    DB = "db"
    CACHE = "cache"


# --------------------------------------------------------------------------------------------
# HealthStatus


def test_health_constructors_and_properties() -> None:
    healthy = HealthStatus.healthy()
    degraded = HealthStatus.degraded("replica lag")
    unhealthy = HealthStatus.unhealthy("connection refused")

    assert healthy.is_healthy is True
    assert degraded.is_healthy is False
    assert unhealthy.is_healthy is False
    assert (healthy.reason, degraded.reason, unhealthy.reason) == (
        None,
        "replica lag",
        "connection refused",
    )
    assert [s.kind for s in (healthy, degraded, unhealthy)] == ["healthy", "degraded", "unhealthy"]
    assert [s.severity for s in (healthy, degraded, unhealthy)] == [0, 1, 2]


def test_health_orders_by_severity_and_max_is_worst() -> None:
    healthy = HealthStatus.healthy()
    degraded = HealthStatus.degraded("slow")
    unhealthy = HealthStatus.unhealthy("down")

    assert healthy < degraded < unhealthy
    assert unhealthy > degraded > healthy
    assert healthy <= HealthStatus.healthy() and healthy >= HealthStatus.healthy()
    assert max([degraded, unhealthy, healthy]) is unhealthy
    assert sorted([unhealthy, healthy, degraded]) == [healthy, degraded, unhealthy]


def test_health_is_a_hashable_immutable_value() -> None:
    assert HealthStatus.degraded("slow") == HealthStatus.degraded("slow")
    assert HealthStatus.degraded("slow") != HealthStatus.degraded("stale")
    assert HealthStatus.degraded("slow") != HealthStatus.unhealthy("slow")
    assert len({HealthStatus.healthy(), HealthStatus.healthy(), HealthStatus.degraded("x")}) == 2

    status = HealthStatus.degraded("slow")
    with pytest.raises(AttributeError):
        status._reason = "fast"
    assert status.reason == "slow"
    assert pickle.loads(pickle.dumps(status)) == status


def test_health_repr_and_validation() -> None:
    assert repr(HealthStatus.healthy()) == "HealthStatus.healthy()"
    assert repr(HealthStatus.unhealthy("down")) == "HealthStatus.unhealthy('down')"
    with pytest.raises(ValueError, match="reason"):
        HealthStatus("healthy", "why")
    with pytest.raises(ValueError, match="reason"):
        HealthStatus("degraded")
    with pytest.raises(ValueError, match="unknown"):
        HealthStatus("sick", "flu")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Resources: storing and looking up


def test_insert_chains_and_keys_keep_insertion_order() -> None:
    res: Resources[str] = Resources()
    returned = res.insert("b", 1).insert("a", 2).insert("c", 3)
    assert returned is res
    assert res.keys() == ["b", "a", "c"]
    assert len(res) == 3
    assert "a" in res and "z" not in res
    assert len(Resources.empty()) == 0


def test_duplicate_key_is_rejected_and_names_the_key() -> None:
    res = Resources().insert("db", object())
    with pytest.raises(ResourceError, match="'db'"):
        res.insert("db", object())
    assert len(res) == 1


def test_get_returns_the_stored_object_itself() -> None:
    store = MemoryStore()
    res = Resources().insert("store", store)
    assert res.get("store") is store
    assert res.get("store", MemoryStore) is store
    assert res.try_get("store", MemoryStore) is store


def test_get_missing_key_names_it_and_is_a_key_error() -> None:
    res = Resources().insert("db", 1)
    with pytest.raises(ResourceNotFoundError) as info:
        res.get("cache")
    assert "'cache'" in str(info.value)
    assert "'db'" in str(info.value)  # the stored keys help spot a typo
    with pytest.raises(KeyError):
        res.get("cache")
    with pytest.raises(ResourceError):
        Resources().get("anything", int)


def test_get_wrong_type_names_key_expected_and_actual_and_is_a_type_error() -> None:
    res = Resources().insert("db", "not a store")
    with pytest.raises(ResourceTypeError) as info:
        res.get("db", MemoryStore)
    message = str(info.value)
    assert "'db'" in message
    assert "MemoryStore" in message
    assert "str" in message
    with pytest.raises(TypeError):
        res.get("db", int)


def test_get_checks_with_isinstance() -> None:
    class Base:
        pass

    class Child(Base):
        pass

    child = Child()
    res = Resources().insert("svc", child).insert("items", [1, 2])
    assert res.get("svc", Base) is child
    assert res.get("items", list[int]) == [1, 2]
    with pytest.raises(ResourceTypeError, match="'items'"):
        res.get("items", dict[str, int])


def test_try_get_is_none_only_for_a_missing_key() -> None:
    res = Resources().insert("n", 5)
    assert res.try_get("missing") is None
    assert res.try_get("missing", int) is None
    assert res.try_get("n") == 5
    assert res.try_get("n", int) == 5
    with pytest.raises(ResourceTypeError, match="'n'"):
        res.try_get("n", str)


def test_enum_keys_are_named_in_errors() -> None:
    res: Resources[Key] = Resources().insert(Key.DB, 1)
    assert res.get(Key.DB) == 1
    with pytest.raises(ResourceNotFoundError, match=r"Key\.CACHE"):
        res.get(Key.CACHE)
    with pytest.raises(ResourceError, match=r"Key\.DB"):
        res.insert(Key.DB, 2)


def test_has_lifecycle_tracks_inserted_values() -> None:
    class OnlyTeardown:
        async def teardown(self) -> None:
            pass

    res = Resources().insert("plain", 1).insert("store", MemoryStore())
    assert res._has_lifecycle is False
    res.insert("closer", OnlyTeardown())
    assert res._has_lifecycle is True
    # A class stored as a value is not a lifecycle resource itself.
    assert Resources().insert("cls", OnlyTeardown)._has_lifecycle is False


# --------------------------------------------------------------------------------------------
# Resources: setup and teardown


async def test_setup_in_insertion_order_and_teardown_in_reverse() -> None:
    journal: list[str] = []
    res = (
        Resources()
        .insert("a", Tracked("a", journal))
        .insert("plain", {"not": "a resource"})
        .insert("b", Tracked("b", journal))
        .insert("c", Tracked("c", journal))
    )
    await res.setup_all()
    assert journal == ["setup a", "setup b", "setup c"]
    assert res.get("b", Tracked).ready

    journal.clear()
    await res.teardown_all()
    assert journal == ["teardown c", "teardown b", "teardown a"]
    assert not res.get("b", Tracked).ready


async def test_sync_hooks_are_called_too() -> None:
    calls: list[str] = []

    class Sync:
        def setup(self) -> None:
            calls.append("setup")

        def teardown(self) -> None:
            calls.append("teardown")

    res = Resources().insert("s", Sync())
    await res.setup_all()
    await res.teardown_all()
    assert calls == ["setup", "teardown"]


async def test_failed_setup_rolls_back_earlier_resources_in_reverse_and_reraises() -> None:
    journal: list[str] = []
    res = (
        Resources()
        .insert("a", Tracked("a", journal))
        .insert("b", Tracked("b", journal))
        .insert("c", Tracked("c", journal, fail_setup=True))
        .insert("d", Tracked("d", journal))
    )
    with pytest.raises(ConnectionError, match="c unreachable") as info:
        await res.setup_all()
    assert type(info.value) is ConnectionError  # the original, not wrapped
    assert journal == ["setup a", "setup b", "setup c", "teardown b", "teardown a"]


async def test_rollback_teardown_error_is_logged_and_original_error_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    res = (
        Resources()
        .insert("a", Tracked("a", journal, fail_teardown=True))
        .insert("b", Tracked("b", journal, fail_setup=True))
    )
    with caplog.at_level(logging.ERROR, logger="cano"), pytest.raises(ConnectionError):
        await res.setup_all()
    assert journal == ["setup a", "setup b", "teardown a"]
    assert any("'a'" in r.getMessage() for r in caplog.records)


async def test_teardown_errors_are_logged_not_raised_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    res = (
        Resources()
        .insert("a", Tracked("a", journal))
        .insert("b", Tracked("b", journal, fail_teardown=True))
        .insert("c", Tracked("c", journal))
    )
    with caplog.at_level(logging.ERROR, logger="cano"):
        await res.teardown_all()  # must not raise
    assert journal == ["teardown c", "teardown b", "teardown a"]
    [record] = [r for r in caplog.records if r.name == "cano"]
    assert record.levelno == logging.ERROR
    assert "'b'" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)


async def test_cancelled_teardown_still_tears_down_the_rest() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = (
        Resources().insert("a", Tracked("a", journal)).insert("b", Tracked("b", journal, gate=gate))
    )
    task = asyncio.create_task(res.teardown_all())
    await settle()
    assert journal == ["teardown b"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal == ["teardown b", "teardown a"]


# --------------------------------------------------------------------------------------------
# Resources: leases shared by concurrent runs


async def test_overlapping_leases_share_one_setup_and_one_teardown() -> None:
    journal: list[str] = []
    res = Resources().insert("a", Tracked("a", journal)).insert("b", Tracked("b", journal))

    await res._acquire()
    await res._acquire()
    assert journal == ["setup a", "setup b"]

    await res._release()
    assert journal == ["setup a", "setup b"]  # the other run still uses them
    assert res.get("a", Tracked).ready

    await res._release()
    assert journal == ["setup a", "setup b", "teardown b", "teardown a"]


async def test_run_arriving_during_setup_waits_for_it() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = Resources().insert("a", Tracked("a", journal, gate=gate))

    first = asyncio.create_task(res._acquire())
    await settle()
    second = asyncio.create_task(res._acquire())
    await settle()
    assert journal == ["setup a"]
    assert not first.done() and not second.done()  # nobody uses half-set-up resources

    gate.set()
    await asyncio.gather(first, second)
    assert journal == ["setup a"]
    assert res.get("a", Tracked).ready

    await res._release()
    await res._release()
    assert journal == ["setup a", "teardown a"]


async def test_failed_shared_setup_fails_every_waiter_and_takes_no_lease() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    failing = Tracked("a", journal, gate=gate, fail_setup=True)
    res = Resources().insert("a", failing)

    first = asyncio.create_task(res._acquire())
    await settle()
    second = asyncio.create_task(res._acquire())
    third = asyncio.create_task(res._acquire())
    await settle()
    gate.set()
    results = await asyncio.gather(first, second, third, return_exceptions=True)

    assert all(isinstance(r, ConnectionError) for r in results)
    assert results[0] is results[1] is results[2]  # the same error, not three attempts
    assert journal == ["setup a"]

    # No lease was counted: a release is unbalanced, and the next run sets up afresh.
    with pytest.raises(RuntimeError):
        await res._release()
    failing.fail_setup = False
    await res._acquire()
    assert journal == ["setup a", "setup a"]
    await res._release()
    assert journal == ["setup a", "setup a", "teardown a"]


async def test_acquire_during_last_teardown_waits_and_sets_up_again() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    resource = Tracked("a", journal)
    res = Resources().insert("a", resource)

    await res._acquire()
    resource.gate = gate  # make the teardown block
    releasing = asyncio.create_task(res._release())
    await settle()
    assert journal == ["setup a", "teardown a"]

    arriving = asyncio.create_task(res._acquire())
    await settle()
    assert not arriving.done()  # it must not use half-torn-down resources
    assert journal == ["setup a", "teardown a"]

    gate.set()
    await releasing
    await arriving
    assert journal == ["setup a", "teardown a", "setup a"]
    assert resource.ready

    await res._release()
    assert journal == ["setup a", "teardown a", "setup a", "teardown a"]


async def test_cancelled_waiter_does_not_corrupt_the_count() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = Resources().insert("a", Tracked("a", journal, gate=gate))

    first = asyncio.create_task(res._acquire())
    await settle()
    waiter = asyncio.create_task(res._acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not first.done()  # the shared setup was not cancelled with the waiter

    gate.set()
    await first
    await res._release()  # the only lease: teardown now
    assert journal == ["setup a", "teardown a"]
    with pytest.raises(RuntimeError):
        await res._release()


async def test_cancelled_setup_rolls_back_and_waiters_set_up_themselves() -> None:
    journal: list[str] = []
    gate = asyncio.Event()
    res = (
        Resources().insert("a", Tracked("a", journal)).insert("b", Tracked("b", journal, gate=gate))
    )

    first = asyncio.create_task(res._acquire())
    await settle()
    second = asyncio.create_task(res._acquire())
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    # "a" was rolled back; the waiter, not cancelled itself, started a new setup.
    assert journal == ["setup a", "setup b", "teardown a", "setup a", "setup b"]

    gate.set()
    await second
    await res._release()
    assert journal[-2:] == ["teardown b", "teardown a"]


async def test_leases_without_lifecycle_resources_are_harmless() -> None:
    res = Resources().insert("n", 1)
    await res._acquire()
    await res._acquire()
    await res._release()
    await res._release()
    with pytest.raises(RuntimeError):
        await res._release()


async def test_inserting_a_lifecycle_resource_while_leased_is_rejected() -> None:
    journal: list[str] = []
    res = Resources().insert("a", Tracked("a", journal))
    await res._acquire()
    with pytest.raises(ResourceError, match="'late'"):
        res.insert("late", Tracked("late", journal))
    res.insert("value", 42)  # plain values need no setup
    await res._release()
    res.insert("late", Tracked("late", journal))
    assert res.keys() == ["a", "value", "late"]


# --------------------------------------------------------------------------------------------
# Resources: health


class Probe:
    def __init__(self, status: HealthStatus) -> None:
        self.status = status

    def health(self) -> HealthStatus:
        return self.status


class AsyncProbe(Probe):
    async def health(self) -> HealthStatus:  # type: ignore[override]
        return self.status


async def test_check_all_health_reports_every_key() -> None:
    class Broken:
        def health(self) -> HealthStatus:
            raise RuntimeError("probe crashed")

    res = (
        Resources()
        .insert("plain", 1)
        .insert("store", MemoryStore())
        .insert("slow", Probe(HealthStatus.degraded("slow")))
        .insert("down", AsyncProbe(HealthStatus.unhealthy("down")))
        .insert("broken", Broken())
    )
    report = await res.check_all_health()
    assert list(report) == ["plain", "store", "slow", "down", "broken"]
    assert report["plain"] == HealthStatus.healthy()
    assert report["store"] == HealthStatus.healthy()
    assert report["slow"] == HealthStatus.degraded("slow")
    assert report["down"] == HealthStatus.unhealthy("down")
    assert not report["broken"].is_healthy
    assert "probe crashed" in (report["broken"].reason or "")


async def test_explicit_resource_subclass_gets_the_defaults() -> None:
    class Connection(Resource):
        opened = False

        async def setup(self) -> None:
            self.opened = True

    res = Resources().insert("conn", Connection())
    assert res._has_lifecycle
    await res.setup_all()
    await res.teardown_all()  # the inherited teardown does nothing
    assert res.get("conn", Connection).opened
    assert await res.check_all_health() == {"conn": HealthStatus.healthy()}


async def test_health_returning_something_else_is_a_type_error() -> None:
    class Wrong:
        def health(self) -> Any:
            return True

    with pytest.raises(ResourceTypeError, match="'wrong'"):
        await Resources().insert("wrong", Wrong()).check_all_health()


async def test_aggregate_health_is_the_worst() -> None:
    assert await Resources().aggregate_health() == HealthStatus.healthy()

    res = Resources().insert("ok", Probe(HealthStatus.healthy()))
    assert await res.aggregate_health() == HealthStatus.healthy()

    res.insert("slow", AsyncProbe(HealthStatus.degraded("slow")))
    assert await res.aggregate_health() == HealthStatus.degraded("slow")

    res.insert("down", Probe(HealthStatus.unhealthy("down")))
    res.insert("lagging", Probe(HealthStatus.degraded("lag")))
    assert await res.aggregate_health() == HealthStatus.unhealthy("down")


# --------------------------------------------------------------------------------------------
# MemoryStore


def test_store_put_get_overwrite_and_share_by_reference() -> None:
    store = MemoryStore()
    payload = {"rows": [1]}
    store.put("payload", payload)
    assert store.get("payload") is payload
    store.put("payload", "now a string")  # the type may change
    assert store.get("payload") == "now a string"

    res = Resources().insert("store", store)
    res.get("store", MemoryStore).put("seen", True)
    assert store.get("seen") is True


def test_store_get_missing_key() -> None:
    store = MemoryStore()
    with pytest.raises(KeyNotFoundError, match="'x'") as info:
        store.get("x")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, StoreError)
    assert str(info.value) == "key 'x' not found in MemoryStore"
    assert store.get("x", None) is None
    assert store.get("x", 7) == 7
    assert repr(MISSING) == "cano.MISSING"


def test_store_remove_is_silent_for_missing_keys() -> None:
    store = MemoryStore()
    store.put("a", 1)
    store.remove("a")
    store.remove("a")
    store.remove("never")
    assert "a" not in store
    assert len(store) == 0


def test_store_append() -> None:
    store = MemoryStore()
    store.append("events", "start")
    events = store.get("events")
    assert events == ["start"]
    store.append("events", "stop")
    assert events == ["start", "stop"]  # extended in place
    assert store.get("events") is events


def test_store_append_to_a_non_list_names_key_and_type() -> None:
    store = MemoryStore()
    store.put("count", 3)
    with pytest.raises(StoreError) as info:
        store.append("count", 4)
    assert "'count'" in str(info.value)
    assert "int" in str(info.value)
    assert store.get("count") == 3


def test_store_contains_keys_len_clear_and_health() -> None:
    store = MemoryStore()
    store.put("b", 1)
    store.put("a", 2)
    assert "a" in store and "c" not in store
    assert store.keys() == ["b", "a"]
    assert len(store) == 2
    store.clear()
    assert len(store) == 0
    assert store.keys() == []
    assert store.health() == HealthStatus.healthy()
    # It has no lifecycle: it needs no setup before a run.
    assert Resources().insert("store", store)._has_lifecycle is False


def test_split_result_key() -> None:
    assert SPLIT_RESULT_KEY == "cano.split_result"
