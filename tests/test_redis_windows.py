"""Rate windows in Redis: exact across connections, on Redis's clock, with a local
fallback while Redis is away.

The windows' time is Redis's: the only real waiting here is for a 2 s window that
Redis itself says when it ends (the wait its refusal returns).
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
import trio

from actors.redis_link import LinkState, RedisLink, RedisUnavailable
from actors.redis_windows import RedisWindows

DEADLINE_S = 60


@asynccontextmanager
async def links(url: str, n: int, timeout_s: float = 5.0):
    """``n`` links to Redis, each with its own connection pool: as ``n`` processes."""
    async with trio.open_nursery() as nursery:
        made = []
        for _ in range(n):
            link = RedisLink(url, timeout_s)
            await nursery.start(link.run)
            made.append(link)
        yield made
        nursery.cancel_scope.cancel()


async def _admit_all(windows: list[RedisWindows], scope: str, limit: int, window_s: float, calls: int) -> list:
    answers: list = []

    async def one(i: int) -> None:
        answers.append(await windows[i % len(windows)].admit(scope, limit, window_s, now=0.0))

    async with trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(one, i)
    return answers


async def test_concurrent_admits_from_several_connections_admit_exactly_the_limit(redis_url):
    limit = 37
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 4) as made:
            windows = [RedisWindows(link) for link in made]
            answers = await _admit_all(windows, "key:demo", limit, 2.0, 200)
            assert sum(a is None for a in answers) == limit
            waits = [a for a in answers if a is not None]
            assert len(waits) == 200 - limit and all(0 < w <= 2.0 for w in waits)
            assert all(link.stats().fallbacks == {} for link in made), "Redis answered every call"

            await trio.sleep(max(waits))  # Redis's own word on when the window has room again
            again = await _admit_all(windows, "key:demo", limit, 2.0, 200)
            assert sum(a is None for a in again) == limit, "the next window let exactly the limit in"


async def test_costs_count_against_the_limit_and_scopes_are_apart(redis_url):
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 1) as [link]:
            windows = RedisWindows(link)
            assert await windows.admit("credential:a:tokens", 100, 60, 0.0, cost=60) is None
            assert await windows.admit("credential:a:tokens", 100, 60, 0.0, cost=60) is not None
            assert await windows.admit("credential:a:tokens", 100, 60, 0.0, cost=40) is None
            assert await windows.admit("credential:b:tokens", 100, 60, 0.0, cost=100) is None
            assert await windows.admit("credential:b:tokens", 100, 60, 0.0, cost=101) == 60.0


async def test_unreachable_redis_falls_back_to_this_process_and_returns(redis_server, redis_url, caplog):
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 1, timeout_s=1.0) as [link]:
            link.retry_s = 0.05
            windows = RedisWindows(link)
            assert await windows.admit("key:k", 2, 60, 0.0) is None
            redis_server.stop()
            answers = [await windows.admit("key:k", 2, 60, now=100.0) for _ in range(3)]
            assert answers[:2] == [None, None] and answers[2] is not None, "the local window took over"
            assert link.state is LinkState.DOWN
            assert link.stats().fallbacks == {"windows": 3}
            warnings = [r for r in caplog.records if r.name == "tollhouse.redis"]
            assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
            assert str(redis_server.port) not in warnings[0].getMessage()

            redis_server.start()
            await link.wait_state(LinkState.UP)
            assert await windows.admit("key:k", 2, 60, 0.0) is None  # Redis again: a fresh server's window
            assert link.stats().fallbacks == {"windows": 3}


async def test_a_refused_password_is_unreachable_and_never_shown(redis_server, redis_url, caplog):
    """Redis refusing the URL's password is Redis unavailable to the link -- said
    without the URL or the password."""
    url = f"redis://:s3cret-pw@127.0.0.1:{redis_server.port}/0"
    assert redis_server.command("CONFIG", "SET", "requirepass", "another-pw").startswith(b"+OK")
    try:
        with trio.fail_after(DEADLINE_S):
            async with links(url, 1, timeout_s=2.0) as [link]:
                assert link.state is LinkState.DOWN
                assert await RedisWindows(link).admit("key:k", 1, 60, 0.0) is None  # the local window answered
                assert link.stats().fallbacks == {"windows": 1}
    finally:
        redis_server.command("CONFIG", "SET", "requirepass", '""', password="another-pw")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in text
    assert "s3cret-pw" not in text and str(redis_server.port) not in text



async def test_a_connection_closed_under_a_call_is_unreachable_not_a_crash(redis_url):
    """coredis lets anyio's stream errors through when a connection closes under a
    command (the subscription's cleanup at a stop hits it): the link goes down and the
    window answers from this process, as for any other loss of Redis."""
    with trio.fail_after(DEADLINE_S):
        async with links(redis_url, 1) as [link]:
            windows = RedisWindows(link)
            for error in (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                link.mark_up()

                async def closed(client, error=error):
                    raise error()

                with pytest.raises(RedisUnavailable, match=error.__name__):
                    await link.call(closed)
                assert link.state is LinkState.DOWN
            assert await windows.admit("closed", 1, 60, now=0.0) is None  # this process's window admits
            assert link.stats().fallbacks == {"windows": 1}
