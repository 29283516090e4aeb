"""A keep-alive connection at its request limit (``server.keep_alive_max_requests``):
the answer that reaches it says ``Connection: close`` and is delivered whole, the
connection then closes cleanly, and the client's next request is served on a new one.

Also when the client has already sent that next request on the old connection (HTTP/1.1
pipelining, or a client that writes before it reads the header): that request is not
served there, and the answer in progress is not cut. And a close asked for by another
task than the answer's writer never makes the writer's next write fail.
"""

from __future__ import annotations

import json
import logging

import h11
import pytest
import trio
from hypercorn.events import Closed
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app

from gateway.config import ServerConfig
from gateway.process import server_config
from tests.conftest import DEMO_KEY, base_config, running_gateway
from tests.test_connection_hygiene import Conn, _header

HEADERS = [("authorization", f"Bearer {DEMO_KEY}"), ("content-type", "application/json")]


def _chat(stream: bool) -> bytes:
    return json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()


def _raw_request(body: bytes) -> bytes:
    """A request's bytes, framed by a connection of its own (sent behind another's)."""
    framer = h11.Connection(h11.CLIENT)
    return (framer.send(h11.Request(method="POST", target="/v1/chat/completions",
                                    headers=[("host", "gateway"), *HEADERS, ("content-length", str(len(body)))]))
            + framer.send(h11.Data(data=body)) + framer.send(h11.EndOfMessage()))


def _assert_whole(body: bytes, stream: bool) -> None:
    if stream:
        assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
        assert b'"finish_reason": "stop"' in body or b'"finish_reason":"stop"' in body
    else:
        answer = json.loads(body)
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] > 0


def _gateway_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_thousand_and_one_requests_on_one_connection_are_all_answered(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    body = _chat(stream=False)
    closes: list[int] = []
    with trio.fail_after(120):
        async with running_gateway(base_config(tmp_path)) as gw:  # hypercorn's default limit: 1000
            async with Conn.open(gw.url) as conn:
                for n in range(1, 1001):
                    await conn.request("POST", "/v1/chat/completions", HEADERS, body)
                    head, answer = await conn.response()
                    assert head.status_code == 200, (n, answer)
                    _assert_whole(answer, stream=False)
                    if _header(head, b"connection") == b"close":
                        closes.append(n)
                        break
                    conn.next_cycle()
                await conn.eof()  # closed by the server, cleanly: no reset, no stray bytes
            async with Conn.open(gw.url) as conn:  # the client reconnects
                await conn.request("POST", "/v1/chat/completions", HEADERS, body)
                head, answer = await conn.response()
            assert head.status_code == 200
            _assert_whole(answer, stream=False)
            assert gw.simulator.requests == 1001
    assert closes == [1000]
    assert _gateway_errors(caplog) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_request_sent_behind_the_closing_answer_does_not_cut_it(tmp_path, caplog, stream):
    caplog.set_level(logging.ERROR)
    doc = base_config(tmp_path)
    doc["server"]["keep_alive_max_requests"] = 3
    body = _chat(stream)
    with trio.fail_after(30):
        async with running_gateway(doc) as gw:
            async with Conn.open(gw.url) as conn:
                for n in range(1, 4):
                    await conn.request("POST", "/v1/chat/completions", HEADERS, body)
                    head, answer, pipelined = None, b"", False
                    while True:  # Conn.response, sending the next request as soon as the head is in
                        event = conn.h11.next_event()
                        if event is h11.NEED_DATA:
                            conn.h11.receive_data(await conn.stream.receive_some(65536))
                        elif isinstance(event, h11.Response):
                            head = event
                            if n == 3:
                                await conn.send_raw(_raw_request(body))
                                pipelined = True
                        elif isinstance(event, h11.Data):
                            answer += event.data
                        elif isinstance(event, h11.EndOfMessage):
                            break
                        else:
                            raise AssertionError(f"answer {n} cut: {event!r}")
                    assert head.status_code == 200
                    _assert_whole(answer, stream)
                    if n < 3:
                        assert _header(head, b"connection") is None
                        conn.next_cycle()
                assert pipelined and _header(head, b"connection") == b"close"
                await conn.eof()
            assert gw.simulator.requests == 3  # the request behind the closing answer was not served
            async with Conn.open(gw.url) as conn:  # ... and is, once resent on a new connection
                await conn.request("POST", "/v1/chat/completions", HEADERS, body)
                head, answer = await conn.response()
            assert head.status_code == 200
            _assert_whole(answer, stream)
    assert _gateway_errors(caplog) == []


async def _close_while_writing() -> list[BaseException]:
    """One connection on a socket pair, served by hypercorn's own connection server with
    the gateway's protocol: while the application writes an answer, another task asks
    for the connection's close. Returns what the application's sends raised."""
    raised: list[BaseException] = []
    writing, done = trio.Event(), trio.Event()

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(300):
                await send({"type": "http.response.body", "body": b"x" * 64, "more_body": True})
                writing.set()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            done.set()

    ours, theirs = trio.socket.socketpair()
    client = trio.SocketStream(theirs)
    server = TCPServer(wrap_app(app, 0, "asgi"), server_config(ServerConfig()), WorkerContext(None), {},
                       trio.SocketStream(ours))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await client.send_all(b"GET / HTTP/1.1\r\nhost: gateway\r\n\r\n")
        await writing.wait()
        await server.protocol.protocol.send(Closed())  # as the reading task or a timer would
        while await client.receive_some(65536):  # the connection is closed: an EOF comes
            pass
        await client.aclose()
        await done.wait()
        nursery.cancel_scope.cancel()
    return raised


async def test_a_close_asked_for_while_an_answer_is_written_never_fails_the_writer():
    # Without the gateway's rule about half of these runs raise trio.BusyResourceError in
    # the application: hypercorn sends the FIN outside its send lock, and the writer's next
    # send_all meets it. Twenty runs leave a chance of one in a million to miss it.
    with trio.fail_after(30):
        for _ in range(20):
            assert await _close_while_writing() == []
