"""The upstream HTTP/1.1 client: keep-alive, abandoned bodies, stale pooled connections."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from providers.http11 import Pool, UpstreamConnectError
from providers.simulator import Simulator

CHAT = b'{"model": "sim-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
HEADERS = [("content-type", "application/json"), ("authorization", "Bearer k")]


async def _with_simulator(test):
    sim = Simulator()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        try:
            await test(sim, url)
        finally:
            nursery.cancel_scope.cancel()


async def test_connections_are_reused_after_a_complete_body():
    async def test(sim, url):
        pool = Pool(url)
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
        pool = Pool(url)
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


async def test_a_pooled_connection_closed_by_the_server_is_replaced():
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    async def one_request_per_connection(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(answer)
        await stream.aclose()  # keep-alive promised, connection closed anyway

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, one_request_per_connection, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}")
        with trio.fail_after(5):
            for _ in range(3):
                response = await pool.request("POST", "/x", [], b"{}")
                assert await response.read() == b"ok"
                await response.aclose()
        assert pool.opened == 3
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_unreachable_origin_is_a_connect_error():
    with socket_closed_port() as port:
        pool = Pool(f"http://127.0.0.1:{port}", connect_timeout=2)
        with trio.fail_after(5), pytest.raises(UpstreamConnectError):
            await pool.request("POST", "/x", [], b"{}")


def socket_closed_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        yield port

    return closed()
