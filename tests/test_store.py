"""The Responses store: its core with explicit ``now``, and the actor on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from actors.mailbox import Mailbox
from actors.store import (Chain, Delete, Flush, Get, InputItems, Put, Snapshot, StoreActor, StoreLimits,
                          StoredResponse, Sweep)
from actors.store_core import Read, StoreCore
from actors.store_db import ResponseDB, StoreFault
from actors.supervisor import Supervisor

ALICE, BOB = "a" * 64, "b" * 64
T0 = 1_700_000_000.0
DAY = 24 * 3600.0


def record(rid: str, *, owner: str = ALICE, previous: str | None = None, created_at: float = T0,
           text: str = "hi", answer: str = "hello", inputs: tuple | None = None) -> StoredResponse:
    items = inputs if inputs is not None else ({"role": "user", "content": text},)
    response = {"id": rid, "object": "response", "created_at": int(created_at), "status": "completed",
                "model": "gpt-sim", "output": [
                    {"type": "reasoning", "id": f"rs_{rid}", "summary": [], "encrypted_content": "gAAA"},
                    {"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": answer, "annotations": []}]}],
                "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}
    return StoredResponse(id=rid, owner=owner, previous_id=previous, model="gpt-sim", provider="simr",
                          credential="simr-embedded", input=items, response=response, created_at=created_at)


def said(item: dict) -> str:
    """What an item of a rebuilt conversation says: a client's text, an answer's text, or its type."""
    if item.get("type") == "message":
        return item["content"][0]["text"]
    return item["content"] if "role" in item else item["type"]


def client_texts(items) -> list:
    return [item["content"] for item in items if "role" in item and "type" not in item]


# ---------------------------------------------------------------- the core


def test_put_is_visible_at_once_and_only_to_its_owner():
    core = StoreCore(StoreLimits())
    core.put(record("resp_1"), T0)
    got = core.handle(Get("resp_1", ALICE), T0)
    assert got.response["id"] == "resp_1" and got.input == ({"role": "user", "content": "hi"},)
    assert core.handle(Get("resp_1", BOB), T0) is None
    assert core.handle(Get("resp_nope", ALICE), T0) is None
    assert core.handle(Delete("resp_1", BOB), T0) is False
    assert core.handle(Delete("resp_1", ALICE), T0) is True
    assert core.handle(Get("resp_1", ALICE), T0) is None
    assert core.handle(Delete("resp_1", ALICE), T0) is False


def test_an_id_taken_by_another_key_is_not_replaced():
    core = StoreCore(StoreLimits())
    core.put(record("resp_1"), T0)
    core.put(record("resp_1", owner=BOB), T0)  # an upstream that reuses ids
    assert core.handle(Get("resp_1", ALICE), T0) is not None
    assert core.handle(Get("resp_1", BOB), T0) is None


def test_input_items_get_unique_ids_and_keep_their_own():
    core = StoreCore(StoreLimits())
    items = ({"role": "user", "content": "a"}, {"type": "message", "id": "msg_mine", "role": "user", "content": "b"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
             {"type": "message", "id": "msg_mine", "role": "user", "content": "c"})
    core.put(record("resp_1", inputs=items), T0)
    listed = core.handle(InputItems("resp_1", ALICE), T0)
    ids = [item["id"] for item in listed]
    assert ids[1] == "msg_mine" and ids[0].startswith("msg_") and ids[2].startswith("fco_")
    assert len(set(ids)) == 4  # a repeated id gets a fresh one: paging needs them unique
    assert [item["content"] for item in listed if "content" in item] == ["a", "b", "c"]
    assert core.handle(Get("resp_1", ALICE), T0).input == items  # kept as the client sent them
    assert core.handle(InputItems("resp_1", BOB), T0) is None


def test_chain_runs_oldest_first_and_a_hole_gives_none():
    core = StoreCore(StoreLimits())
    core.put(record("resp_1", text="one", answer="first"), T0)
    core.put(record("resp_2", previous="resp_1", text="two", answer="second"), T0 + 1)
    core.put(record("resp_3", previous="resp_2", text="three", answer="third"), T0 + 2)
    chain = core.handle(Chain("resp_3", ALICE), T0 + 3)
    assert [said(item) for item in chain] == ["one", "reasoning", "first", "two", "reasoning", "second", "three",
                                              "reasoning", "third"]
    assert [item["encrypted_content"] for item in chain if item.get("type") == "reasoning"] == ["gAAA"] * 3
    assert [item for item in chain if "role" in item and "type" not in item] == [
        {"role": "user", "content": text} for text in ("one", "two", "three")]  # no store-made ids go upstream
    assert core.handle(Chain("resp_1", ALICE), T0 + 3) == chain[:3]
    assert core.handle(Chain("resp_3", BOB), T0 + 3) is None
    core.handle(Delete("resp_2", ALICE), T0 + 3)
    assert core.handle(Chain("resp_3", ALICE), T0 + 3) is None
    assert core.handle(Get("resp_3", ALICE), T0 + 3) is not None
    core.put(record("resp_4", previous="resp_unknown"), T0)
    assert core.handle(Chain("resp_4", ALICE), T0) is None


def test_chain_with_another_owners_ancestor_is_none():
    core = StoreCore(StoreLimits())
    core.put(record("resp_1", owner=BOB), T0)
    core.put(record("resp_2", previous="resp_1"), T0 + 1)
    assert core.handle(Chain("resp_2", ALICE), T0 + 2) is None


def test_age_limit_hides_then_sweeps_old_responses():
    core = StoreCore(StoreLimits(max_age_s=30 * DAY))
    core.put(record("resp_old", created_at=T0), T0)
    core.put(record("resp_new", created_at=T0 + 10 * DAY), T0 + 10 * DAY)
    later = T0 + 31 * DAY
    assert core.handle(Get("resp_old", ALICE), later) is None  # past the age even before a sweep
    assert core.handle(Get("resp_new", ALICE), later) is not None
    assert core.handle(Sweep(later), T0) == 1
    assert set(core.index) == {"resp_new"} and core.evicted_by_age == 1
    assert core.unwritten["resp_old"] is None  # deleted on disk at the next write


def test_size_limit_evicts_oldest_first_on_put():
    probe = StoreCore(StoreLimits())
    probe.put(record("resp_probe"), T0)
    size = probe.total_bytes
    core = StoreCore(StoreLimits(max_bytes=3 * size + size // 2))
    for n, created_at in enumerate([T0 + 5, T0 + 1, T0 + 3]):
        core.put(record(f"resp_{n}", created_at=created_at), T0 + 10)
    assert len(core.index) == 3
    core.put(record("resp_3", created_at=T0 + 9), T0 + 10)  # over the limit: the oldest goes
    assert set(core.index) == {"resp_0", "resp_2", "resp_3"} and core.evicted_by_size == 1
    core.put(record("resp_4", created_at=T0 + 9), T0 + 10)
    assert set(core.index) == {"resp_0", "resp_3", "resp_4"}
    assert core.total_bytes <= core.limits.max_bytes


def test_a_replacement_counts_once_and_a_record_over_the_limit_is_refused():
    core = StoreCore(StoreLimits(max_bytes=2000))
    core.put(record("resp_1"), T0)
    first = core.total_bytes
    core.put(record("resp_1", answer="changed"), T0)
    assert len(core.index) == 1 and core.total_bytes == first + len("changed") - len("hello")
    assert core.handle(Get("resp_1", ALICE), T0).response["output"][1]["content"][0]["text"] == "changed"
    core.put(record("resp_big", text="x" * 5000), T0)
    assert "resp_big" not in core.index and core.refused_too_large == 1 and "resp_1" in core.index


def test_memory_holds_at_most_cache_bytes_and_a_miss_is_a_disk_read():
    probe = StoreCore(StoreLimits())
    probe.put(record("resp_probe"), T0)
    one = probe.total_bytes
    core = StoreCore(StoreLimits(cache_bytes=3 * one))
    for n in range(50):
        core.put(record(f"resp_{n:02}"), T0)
        core.take_writes()
        core.written()
        assert core.cache_used <= 3 * one
    assert len(core.cache) == 3 and len(core.index) == 50
    assert not isinstance(core.handle(Get("resp_49", ALICE), T0), Read)
    read = core.handle(Get("resp_00", ALICE), T0)
    assert isinstance(read, Read) and read.ids == ("resp_00",)
    assert core.handle(Get("resp_00", BOB), T0) is None  # ownership is decided from the index alone


def test_records_not_yet_written_are_answered_from_memory():
    core = StoreCore(StoreLimits(cache_bytes=0))
    core.put(record("resp_1"), T0)
    assert core.handle(Get("resp_1", ALICE), T0).id == "resp_1"  # unwritten
    batch = core.take_writes()
    assert core.handle(Get("resp_1", ALICE), T0).id == "resp_1"  # in the writer's hands
    core.write_failed()
    assert core.unwritten == batch
    core.take_writes()
    core.written()
    assert isinstance(core.handle(Get("resp_1", ALICE), T0), Read)


# ---------------------------------------------------------------- the actor


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _run_store(state_dir, nursery, limits=StoreLimits(), clock=None) -> tuple[Mailbox, StoreActor]:
    sup = Supervisor(restart_backoff=0)
    limiter = trio.CapacityLimiter(1)
    mailbox = sup.add("store", lambda: StoreActor(limits, str(state_dir), limiter, clock=clock or Clock(T0)),
                      64, 5.0)
    await nursery.start(sup.run)
    return mailbox, sup.actor("store")


async def test_actor_put_get_delete_and_chain(tmp_path):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            store, _ = await _run_store(tmp_path, nursery)
            await store.tell(Put(record("resp_1", text="one")))
            await store.tell(Put(record("resp_2", previous="resp_1", text="two")))
            assert (await store.ask(Get("resp_2", ALICE))).previous_id == "resp_1"
            assert await store.ask(Get("resp_2", BOB)) is None
            chain = await store.ask(Chain("resp_2", ALICE))
            assert client_texts(chain) == ["one", "two"]
            assert [item["content"] for item in await store.ask(InputItems("resp_1", ALICE))] == ["one"]
            assert await store.ask(Delete("resp_1", ALICE)) is True
            assert await store.ask(Chain("resp_2", ALICE)) is None
            nursery.cancel_scope.cancel()


async def test_actor_state_survives_a_restart_and_misses_read_the_disk(tmp_path):
    probe = StoreCore(StoreLimits())
    probe.put(record("resp_probe"), T0)
    limits = StoreLimits(cache_bytes=2 * probe.total_bytes)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            store, _ = await _run_store(tmp_path, nursery, limits)
            for n in range(10):
                await store.tell(Put(record(f"resp_{n}", previous=f"resp_{n - 1}" if n else None, text=str(n))))
            await store.tell(Put(record("resp_gone")))
            await store.ask(Delete("resp_gone", ALICE))
            nursery.cancel_scope.cancel()  # a stop without a Flush: pending writes still land
        async with trio.open_nursery() as nursery:
            store, actor = await _run_store(tmp_path, nursery, limits)
            assert actor.core.cache_used == 0 and len(actor.core.index) == 10
            got = await store.ask(Get("resp_3", ALICE))
            assert got.input == ({"role": "user", "content": "3"},) and got.response["output"][0]["encrypted_content"]
            assert await store.ask(Get("resp_gone", ALICE)) is None
            assert await store.ask(Get("resp_3", BOB)) is None
            chain = await store.ask(Chain("resp_9", ALICE))  # ten records, eight of them read from disk
            assert client_texts(chain) == [str(n) for n in range(10)]
            listed = await store.ask(InputItems("resp_3", ALICE))
            again = await store.ask(InputItems("resp_3", ALICE))
            assert listed == again and listed[0]["id"].startswith("msg_")  # the ids were stored
            assert actor.core.cache_used <= limits.cache_bytes
            nursery.cancel_scope.cancel()


async def test_actor_flush_commits_and_sweep_follows_its_clock(tmp_path):
    clock = Clock(T0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            store, actor = await _run_store(tmp_path, nursery, StoreLimits(max_age_s=DAY), clock)
            await store.tell(Put(record("resp_1", created_at=T0)))
            await store.tell(Put(record("resp_2", created_at=T0 + DAY / 2)))
            await store.ask(Flush())
            assert actor.commits >= 1 and not actor.core.unwritten and not actor.core.writing
            assert [r.id for r in actor.db.index()] == ["resp_1", "resp_2"]
            clock.now = T0 + DAY + 1
            assert await store.ask(Sweep()) == 1
            await store.ask(Flush())
            assert [r.id for r in actor.db.index()] == ["resp_2"]
            assert (await store.ask(Snapshot()))["evicted_by_age"] == 1
            nursery.cancel_scope.cancel()


async def test_a_start_sweeps_what_the_limits_no_longer_allow(tmp_path):
    clock = Clock(T0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            store, _ = await _run_store(tmp_path, nursery, StoreLimits(), clock)
            for n in range(4):
                await store.tell(Put(record(f"resp_{n}", created_at=T0 + n)))
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            probe = StoreCore(StoreLimits())
            probe.put(record("resp_0"), T0)
            limits = StoreLimits(max_bytes=2 * probe.total_bytes)
            store, actor = await _run_store(tmp_path, nursery, limits, clock)
            assert set(actor.core.index) == {"resp_2", "resp_3"}  # the oldest went first
            await store.ask(Flush())
            assert sorted(r.id for r in actor.db.index()) == ["resp_2", "resp_3"]
            nursery.cancel_scope.cancel()


async def test_a_refused_write_keeps_responses_readable_and_lands_later(tmp_path):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            store, actor = await _run_store(tmp_path, nursery)
            other = sqlite3.connect(actor.db.path, isolation_level=None)  # another process's writer
            try:
                other.execute("BEGIN IMMEDIATE")
                await store.tell(Put(record("resp_1")))
                await actor.wait_write_failures(1)
                assert (await store.ask(Snapshot()))["fault"] and (await store.ask(Get("resp_1", ALICE))).id == "resp_1"
                other.execute("ROLLBACK")
            finally:
                other.close()
            await store.ask(Flush())
            assert [r.id for r in actor.db.index()] == ["resp_1"] and actor.fault is None
            nursery.cancel_scope.cancel()



@pytest.mark.parametrize("content,fault", [(b"", "empty"), (b"this is not a database, only text " * 64, "cannot be used")])
def test_a_store_file_that_cannot_be_trusted_refuses_the_start(tmp_path, content, fault):
    (tmp_path / "responses.sqlite3").write_bytes(content)
    with pytest.raises(StoreFault) as refused:
        ResponseDB(tmp_path)
    assert "responses.sqlite3" in str(refused.value) and fault in str(refused.value)
