"""A keep-alive connection at its request limit (``server.keep_alive_max_requests``):
the answer that reaches it says ``Connection: close`` and is delivered whole, the
connection then closes cleanly, and the client's next request is served on a new one.

Also when the client has already sent that next request on the old connection (HTTP/1.1
pipelining, or a client that writes before it reads the header): that request is not
served there, and the answer in progress is not cut.
"""

from __future__ import annotations

import json
import logging

import h11
import pytest
import trio

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
