"""One contract for every queue store: the in-memory store and Redis behave alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from lamps.scheduler.queue import Commit, MemoryStore, NotLeaderError, RedisStore, Store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        made: Store = MemoryStore(worker_lease_seconds=0.2)
    else:
        url = request.getfixturevalue("redis_server")
        made = RedisStore(url, prefix="contract", worker_lease_seconds=0.2)
    yield made
    await made.close()


async def wait_until(check: object, within: float = 5.0) -> None:
    """Poll an async predicate until it holds (leases expire in real time)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_commit_then_load_gives_back_records_queue_and_lane(store: Store) -> None:
    commit = Commit(
        records={"a": {"state": b"1"}, "b": {"state": b"2"}, "c": {"state": b"3"}},
        enqueue={"a": 5.0, "b": 1.0, "c": 3.0},
        starved=["c"],
        meta={"passes": b"7"},
    )
    await store.commit(commit)
    snapshot = await store.load()
    assert snapshot.records == {"a": {"state": b"1"}, "b": {"state": b"2"}, "c": {"state": b"3"}}
    assert snapshot.queue == [("b", 1.0), ("c", 3.0), ("a", 5.0)]
    assert snapshot.starved == ["c"]
    assert snapshot.meta == {"passes": b"7"}


async def test_record_fields_merge_and_dequeue_leaves_queue_and_lane(store: Store) -> None:
    await store.commit(
        Commit(records={"a": {"request": b"r", "state": b"1"}}, enqueue={"a": 1.0}, starved=["a"])
    )
    await store.commit(Commit(records={"a": {"state": b"2"}}, dequeue={"a"}))
    snapshot = await store.load()
    assert snapshot.records["a"] == {"request": b"r", "state": b"2"}
    assert snapshot.queue == []
    assert snapshot.starved == []


async def test_finished_requests_leave_the_snapshot_but_keep_record_and_log(store: Store) -> None:
    await store.commit(Commit(records={"a": {"state": b"1"}}, events={"a": (0, [b"e0"])}))
    await store.commit(
        Commit(records={"a": {"state": b"done"}}, events={"a": (1, [b"e1"])}, finished={"a"})
    )
    assert (await store.load()).records == {}
    assert await store.record("a") == {"state": b"done"}
    assert await store.events("a", 0, 10) == [b"e0", b"e1"]
    assert await store.record("unknown") is None


async def test_event_log_reads_from_an_offset_and_ignores_repeated_appends(store: Store) -> None:
    await store.commit(Commit(events={"a": (0, [b"e0", b"e1", b"e2"])}))
    await store.commit(Commit(events={"a": (2, [b"again", b"e3"])}))
    assert await store.events("a", 0, 100) == [b"e0", b"e1", b"e2", b"e3"]
    assert await store.events("a", 2, 100) == [b"e2", b"e3"]
    assert await store.events("a", 1, 2) == [b"e1", b"e2"]
    assert await store.events("a", 9, 100) == []
    assert await store.events("nobody", 0, 100) == []


async def test_commit_events_must_be_contiguous() -> None:
    commit = Commit()
    commit.append_events("a", 0, [b"e0"])
    commit.append_events("a", 1, [b"e1"])
    assert commit.events["a"] == (0, [b"e0", b"e1"])
    with pytest.raises(ValueError, match="contiguous"):
        commit.append_events("a", 5, [b"e5"])


async def test_idempotency_keys_are_read_back(store: Store) -> None:
    await store.commit(Commit(idempotency={"k1": b"id-1"}))
    assert await store.idempotency(["k1", "k2"]) == {"k1": b"id-1"}
    assert await store.idempotency([]) == {}


async def test_leader_lease_is_exclusive_renewable_and_released(store: Store) -> None:
    assert await store.acquire_leader("one", 5.0)
    assert not await store.acquire_leader("two", 5.0)
    assert await store.acquire_leader("one", 5.0)
    assert await store.leader() == "one"
    await store.release_leader("two")
    assert await store.leader() == "one"
    await store.release_leader("one")
    assert await store.leader() is None
    assert await store.acquire_leader("two", 5.0)


async def test_an_expired_leader_lease_can_be_taken(store: Store) -> None:
    assert await store.acquire_leader("one", 0.05)

    async def taken() -> bool:
        return await store.acquire_leader("two", 5.0)

    await wait_until(taken)
    assert await store.leader() == "two"


async def test_fenced_commit_from_a_replica_without_the_lease_writes_nothing(store: Store) -> None:
    assert await store.acquire_leader("one", 5.0)
    await store.commit(Commit(records={"a": {"state": b"1"}}), fence="one")
    with pytest.raises(NotLeaderError):
        await store.commit(Commit(records={"b": {"state": b"1"}}, enqueue={"b": 1.0}), fence="two")
    snapshot = await store.load()
    assert set(snapshot.records) == {"a"}
    assert snapshot.queue == []


async def test_worker_leases_expire(store: Store) -> None:
    await store.commit(Commit(workers={"w1": b"info"}))
    assert await store.worker_leases() == {"w1": b"info"}

    async def expired() -> bool:
        return await store.worker_leases() == {}

    await wait_until(expired)


async def test_tool_statistics_count_and_average(store: Store) -> None:
    await store.commit(Commit(tool_durations=[("emulated.qa", 1.0), ("emulated.qa", 2.0)]))
    await store.commit(Commit(tool_durations=[("calculator", 0.5)]))
    stats = await store.tool_stats()
    assert stats["emulated.qa"].count == 2
    assert stats["emulated.qa"].mean_seconds == pytest.approx(1.5)
    assert stats["calculator"].mean_seconds == pytest.approx(0.5)


async def test_a_whole_commit_is_one_round_trip(store: Store) -> None:
    before = store.round_trips
    commit = Commit(records={"a": {"s": b"1"}}, enqueue={"a": 1.0}, events={"a": (0, [b"e"])})
    commit.workers["w"] = b"info"
    await store.commit(commit)
    assert store.round_trips - before == 1
    await store.commit(Commit())
    assert store.round_trips - before <= 2
