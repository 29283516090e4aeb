"""The upstream HTTP/1.1 client through real sockets: keep-alive, abandoned bodies, a
request written at most once, dead and expired idle connections, the per-origin cap."""

from __future__ import annotations

import contextlib
import socket
import sys
from functools import partial

import pytest
import trio
import trio.testing

from protocols import openai_chat
from protocols.errors import UpstreamServerError
from providers import base
from providers.http11 import Pool, RequestBroken, RequestNotSent
from providers.simulator import Simulator
from tests.gated_upstream import GatedUpstream
from tests.raw_upstream import RawUpstream, ok

CHAT = b'{"model": "sim-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
HEADERS = [("content-type", "application/json"), ("authorization", "Bearer k")]
NO_PROXY_ENV: dict = {}  # loopback tests must not follow the host's HTTP(S)_PROXY


@pytest.fixture
def clock():
    """Real time plus ``jump``: deadlines still fire, idle ages can be skipped."""
    return trio.testing.MockClock(rate=1.0)


async def _with_simulator(test):
    sim = Simulator()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        try:
            await test(sim, url)
        finally:
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _upstream(answer=ok):
    upstream = RawUpstream(answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve)
        try:
            yield upstream
        finally:
            nursery.cancel_scope.cancel()


async def _get(pool: Pool, body: bytes = b"{}") -> bytes:
    response = await pool.request("POST", "/x", [], body)
    try:
        return await response.read()
    finally:
        await response.aclose()


async def _seen_closed(pool: Pool) -> None:
    """Wait until the FIN of every idle connection has reached this host (the state a
    gateway is in when an upstream closed its keep-alive connections a while ago)."""
    for conn in list(pool._idle):
        await trio.lowlevel.wait_readable(conn.sock)


async def test_connections_are_reused_after_a_complete_body():
    async def test(sim, url):
        pool = Pool(url, env=NO_PROXY_ENV)
        for _ in range(3):
            response = await pool.request("POST", f"{url}/v1/chat/completions", HEADERS, CHAT)
            assert response.status == 200
            body = await response.read()
            await response.aclose()
            assert body.endswith(b"data: [DONE]\n\n")
        assert pool.opened == 1
        await pool.aclose()

    with trio.fail_after(10):
        await _with_simulator(test)


async def test_an_abandoned_body_closes_its_connection_at_once():
    async def test(sim, url):
        pool = Pool(url, env=NO_PROXY_ENV)
        stalled = CHAT.replace(b"sim-chat", b"sim-chat+stall_after=3")
        response = await pool.request("POST", f"{url}/v1/chat/completions", HEADERS, stalled)
        assert await response.receive()
        assert sim.in_flight == 1
        await response.aclose()
        with trio.fail_after(1):
            await sim.wait_idle()
        response = await pool.request("POST", f"{url}/v1/chat/completions", HEADERS, CHAT)
        await response.read()
        await response.aclose()
        assert pool.opened == 2
        await pool.aclose()

    with trio.fail_after(10):
        await _with_simulator(test)


@pytest.mark.parametrize("answered_first", [0, 2], ids=["fresh", "reused"])
async def test_a_request_read_and_not_answered_is_received_exactly_once(answered_first):
    def answer(conn, n, body):
        return ok(conn, n, body) if n <= answered_first else None

    with trio.fail_after(10):
        async with _upstream(answer) as upstream:
            pool = Pool(upstream.url, env=NO_PROXY_ENV)
            for _ in range(answered_first):
                assert await _get(pool) == b"ok"
            with pytest.raises(UpstreamServerError) as caught:
                await base.send(pool, "/x", {}, b'{"bill": "me"}', stream=False)
            assert caught.value.request_sent is True
            assert upstream.requests == [answered_first + 1], "written once, on one connection"
            assert upstream.bodies.count(b'{"bill": "me"}') == 1
            await pool.aclose()


async def test_a_pooled_connection_closed_while_idle_is_never_used():
    with trio.fail_after(10):
        async with _upstream() as upstream:
            pool = Pool(upstream.url, env=NO_PROXY_ENV)
            for round_ in range(3):
                assert await _get(pool) == b"ok"
                assert await upstream.close_idle() == 1
                await _seen_closed(pool)
            assert await _get(pool) == b"ok"
            assert upstream.requests == [1, 1, 1, 1], "no request went to a closed connection"
            assert pool.statistics().discarded == 3
            await pool.aclose()


async def test_an_idle_connection_with_stray_bytes_is_discarded():
    """Bytes nobody asked for (a late 408, say) leave the connection's state unknown."""
    requests: list[int] = []
    stray_sent = trio.Event()

    async def late_408(stream: trio.SocketStream) -> None:
        index = len(requests)
        requests.append(0)
        received = b""
        try:
            while data := await stream.receive_some(65536):
                received += data
                requests[index] = received.count(b"POST ")
                if received.endswith(b"{}"):
                    await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    if index == 0:
                        await stream.send_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
                        stray_sent.set()
        except trio.BrokenResourceError:
            return  # the client dropped the connection: what this test wants

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, late_408, 0, host="127.0.0.1"))
            pool = Pool(f"http://127.0.0.1:{listener.socket.getsockname()[1]}", env=NO_PROXY_ENV)
            assert await _get(pool) == b"ok"
            await stray_sent.wait()
            await _seen_closed(pool)
            assert await _get(pool) == b"ok"
            assert requests == [1, 1]
            assert pool.statistics().discarded == 1
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_idle_connections_expire_after_the_keepalive_limit(clock):
    with trio.fail_after(10 + 29):  # the jumps below move the deadline's clock too
        async with _upstream() as upstream:
            pool = Pool(upstream.url, env=NO_PROXY_ENV, keepalive_s=15)
            assert await _get(pool) == b"ok"
            clock.jump(14)
            assert await _get(pool) == b"ok"
            assert upstream.requests == [2], "reused within the limit"
            clock.jump(15)
            assert await _get(pool) == b"ok"
            assert upstream.requests == [2, 1], "a fresh connection after it"
            assert pool.statistics().open == 1
            await pool.aclose()


async def test_connections_per_origin_are_capped():
    release = trio.Event()
    heads: list = []

    async def one(pool: Pool, task_status=trio.TASK_STATUS_IGNORED) -> None:
        response = await pool.request("POST", "/x", [], b"{}")
        heads.append(response)
        task_status.started()
        await release.wait()
        await response.read()
        await response.aclose()

    with trio.fail_after(10):
        async with _upstream() as upstream:
            pool = Pool(upstream.url, env=NO_PROXY_ENV, max_connections=2)
            async with trio.open_nursery() as nursery:
                await nursery.start(one, pool)
                await nursery.start(one, pool)
                nursery.start_soon(one, pool)
                await trio.testing.wait_all_tasks_blocked()
                assert len(heads) == 2
                stats = pool.statistics()
                assert (stats.open, stats.waiting) == (2, 1)
                release.set()
            assert len(heads) == 3
            assert len(upstream.requests) == 2 and sum(upstream.requests) == 3
            await pool.aclose()


async def test_a_request_waiting_too_long_for_a_slot_is_not_sent():
    with trio.fail_after(10):
        async with _upstream() as upstream:
            pool = Pool(upstream.url, env=NO_PROXY_ENV, max_connections=1, connect_timeout=0.2)
            held = await pool.request("POST", "/x", [], b"{}")
            with pytest.raises(RequestNotSent):
                await pool.request("POST", "/x", [], b"{}")
            await held.aclose()
            assert upstream.requests == [1]
            await pool.aclose()


async def test_unreachable_origin_is_not_sent():
    with _closed_port() as port:
        pool = Pool(f"http://127.0.0.1:{port}", env=NO_PROXY_ENV, connect_timeout=2)
        with trio.fail_after(5):
            with pytest.raises(RequestNotSent):
                await pool.request("POST", "/x", [], b"{}")
            with pytest.raises(UpstreamServerError) as caught:
                await base.send(pool, "/x", {}, b"{}", stream=False)
        assert caught.value.request_sent is False


async def test_a_body_cut_mid_way_is_an_error_of_a_sent_request():
    async def cut(stream):
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(partial(trio.serve_tcp, cut, 0, host="127.0.0.1"))
            pool = Pool(f"http://127.0.0.1:{listener.socket.getsockname()[1]}", env=NO_PROXY_ENV)
            response = await pool.request("POST", "/x", [], b"{}")
            with pytest.raises(RequestBroken):
                await response.read()
            await response.aclose()
            assert pool.statistics().open == 0
            nursery.cancel_scope.cancel()


def test_pool_limits_are_validated():
    with pytest.raises(ValueError, match="keepalive_s"):
        Pool("http://127.0.0.1:1", keepalive_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        Pool("http://127.0.0.1:1", max_connections=0)


@contextlib.contextmanager
def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


async def test_an_open_stream_keeps_no_reference_to_its_request_body():
    """Once sent, a request body is never sent again (the server may have read it), so
    a stream that stays open for minutes does not hold it: an agent's body is 50 KB
    and more, times every open stream."""
    upstream = GatedUpstream()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            pool = Pool(upstream.url, env=NO_PROXY_ENV)
            body = CHAT + b" " * 50_000  # a body of its own: no other holder
            async with base.OpenFrames(pool, "/v1/chat/completions", dict(HEADERS), body,
                                       base.SSEFramer(openai_chat.StreamDecoder())) as reader:
                assert await reader.next_batch()  # the first chunk: the stream is open
                assert sys.getrefcount(body) == 2, "only this test's name (and getrefcount's argument) hold it"
                upstream.release()
                while await reader.next_batch() is not None:
                    pass
            await pool.aclose()
            nursery.cancel_scope.cancel()
