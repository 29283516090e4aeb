"""The rests hash in Redis: it lives as long as its longest rest, never for ever."""

from __future__ import annotations

import trio

from actors.redis_link import RedisLink
from actors.redis_rests import CHANNEL, HASH, Rest, RestRelay

DEADLINE_S = 60


async def test_the_rests_hash_expires_with_its_longest_rest(redis_url):
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            link = RedisLink(redis_url, 5.0)
            await nursery.start(link.run)
            relay = RestRelay(link)

            async def begin(rest: Rest) -> None:
                args = [rest.field, int(rest.wait_s * 1000), rest.payload(), CHANNEL, relay.origin]
                await link.call(lambda client: relay._publish(keys=[HASH], args=args))

            await begin(Rest("sim", "a", "*", "rate_limited", 30.0))
            long_ttl = await link.call(lambda client: client.pttl(HASH))
            await begin(Rest("sim", "b", "m", "rate_limited", 2.0))  # a shorter one keeps the longer life
            after = await link.call(lambda client: client.pttl(HASH))
            assert 0 < long_ttl <= 30_000 and 2_000 < after <= long_ttl
            await begin(Rest("sim", "c", "*", "overloaded", 60.0))  # a longer one extends it
            assert 30_000 < await link.call(lambda client: client.pttl(HASH)) <= 60_000
            nursery.cancel_scope.cancel()
