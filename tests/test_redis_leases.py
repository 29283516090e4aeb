"""Credential leases in Redis: concurrency as leases that expire unless renewed, and
per-minute windows, across processes (here: links with their own connections).

Lease expiry is Redis's time; the only real waits are for a 1 s lease to expire."""

from __future__ import annotations

import attrs
import trio

from actors.redis_leases import Refusal, SharedLeases
from tests.test_redis_windows import links

DEADLINE_S = 60


@attrs.frozen
class Spec:
    id: str = "c1"
    max_concurrency: int = 1
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


async def test_a_slot_taken_by_one_process_is_refused_to_another_until_released(redis_url):
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 2) as [one, two], trio.open_nursery() as nursery:
            mine, theirs = SharedLeases(one, 30), SharedLeases(two, 30)
            nursery.start_soon(mine.run)
            lease = await mine.confirm("p", Spec(), 10)
            assert isinstance(lease, str)
            assert await theirs.confirm("p", Spec(), 10) == Refusal("busy", None)
            assert isinstance(await theirs.confirm("p", Spec(id="c2"), 10), str), "another credential is apart"
            mine.release(lease)
            while isinstance(await theirs.confirm("p", Spec(), 10), Refusal):
                await trio.sleep(0.01)  # the release is sent by mine's own task
            nursery.cancel_scope.cancel()


async def test_a_renewed_lease_outlives_its_ttl_and_a_crashed_ones_expires(redis_url):
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 2) as [one, two]:
            other = SharedLeases(two, 30)
            async with trio.open_nursery() as alive:
                mine = SharedLeases(one, 1.0)
                alive.start_soon(mine.run)
                assert isinstance(await mine.confirm("p", Spec(), 0), str)
                await trio.sleep(2.0)  # twice its ttl, renewed every third of it
                assert await other.confirm("p", Spec(), 0) == Refusal("busy", None)
                alive.cancel_scope.cancel()  # the process "crashes": no renewal, no release
            await trio.sleep(1.0)
            assert isinstance(await other.confirm("p", Spec(), 0), str), "the crashed process's lease expired"


async def test_requests_and_tokens_per_minute_hold_across_processes(redis_url):
    spec = Spec(max_concurrency=100, requests_per_minute=3)
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 2) as [one, two]:
            a, b = SharedLeases(one, 30), SharedLeases(two, 30)
            verdicts = [await (a if i % 2 else b).confirm("p", spec, 0) for i in range(5)]
            assert sum(isinstance(v, str) for v in verdicts) == 3
            refusals = [v for v in verdicts if isinstance(v, Refusal)]
            assert {r.reason for r in refusals} == {"requests_per_minute"}
            assert all(0 < r.wait_s <= 60 for r in refusals)

            tokens = Spec(id="t", max_concurrency=100, tokens_per_minute=100)
            assert isinstance(await a.confirm("p", tokens, 120), str)  # under the limit when leased
            refused = await b.confirm("p", tokens, 1)
            assert isinstance(refused, Refusal) and refused.reason == "tokens_per_minute"
