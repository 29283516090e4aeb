"""Connection hygiene on every route, through raw sockets: idle keep-alive connections
are closed, ``Connection: close`` is honoured, a slow head or body is cut, ambiguous
framing and h2c upgrades are refused, a stranger is refused before its body is read.

Each test sets only the timeout it watches short; the others stay long, so an EOF seen
early can only come from the rule under test.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack, asynccontextmanager

import h11
import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

CHAT = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).encode()
LONG = 60.0  # a timeout that no test waits for


def _config(tmp_path, **server):
    doc = base_config(tmp_path)
    doc["server"].update({"keep_alive_timeout_s": LONG, "read_timeout_s": LONG, "body_timeout_s": LONG, **server})
    return doc


class Conn:
    """One client connection: h11 for framing what it sends and reads, nothing hidden."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str):
        host, port = url.split("//")[1].rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            yield cls(stream)
        finally:
            await stream.aclose()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, method: str, target: str, headers: list, body: bytes | None = None,
                      head_only: bool = False) -> None:
        """Send a request; ``head_only``: its head alone (the test sends the body, or not)."""
        headers = [("host", "gateway"), *headers]
        if body is not None:
            headers.append(("content-length", str(len(body))))
        data = self.h11.send(h11.Request(method=method, target=target, headers=headers))
        if not head_only:
            data += self.h11.send(h11.Data(data=body)) if body else b""
            data += self.h11.send(h11.EndOfMessage())
        await self.send_raw(data)

    async def response(self) -> tuple[h11.Response, bytes]:
        """The next response: head and whole body."""
        head, body = None, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return head, body
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the connection closed before a whole response")

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()

    async def eof(self) -> float:
        """Wait for the server to close the connection; returns how long that took.
        Bytes other than an EOF fail the test."""
        start = trio.current_time()
        data = await self.stream.receive_some(65536)
        assert data == b"", f"expected an EOF, got {data[:200]!r}"
        return trio.current_time() - start


def _header(head: h11.Response, name: bytes) -> bytes | None:
    for key, value in head.headers:
        if key == name:
            return value
    return None


ROUTES = [
    ("healthz", "GET", "/healthz", [], 200),
    ("models", "GET", "/v1/models", [("authorization", f"Bearer {DEMO_KEY}")], 200),
    ("admin", "GET", "/admin/keys", [("authorization", f"Bearer {ADMIN_TOKEN}")], 200),
    ("404", "GET", "/no/such/path", [], 404),
    ("405", "GET", "/v1/chat/completions", [], 405),
    ("llm error", "POST", "/v1/chat/completions", [("authorization", f"Bearer {DEMO_KEY}")], 400),
    ("llm answer", "POST", "/v1/chat/completions", [("authorization", f"Bearer {DEMO_KEY}")], 200),
]


async def test_an_idle_keep_alive_connection_is_closed_after_any_answer(tmp_path):
    # long enough that a loaded host's event loop, late to read a request, does not
    # take the connection for idle
    idle_s = 2.0
    waits: dict[str, float] = {}

    async def keep_then_idle(url: str, name: str, method: str, path: str, headers: list, status: int) -> None:
        body = None if method == "GET" else (b"{not json" if status == 400 else CHAT)
        async with Conn.open(url) as conn:
            for _ in range(2):  # the connection is kept after an answer, and then closed when idle
                await conn.request(method, path, headers, body)
                head, _ = await conn.response()
                assert (name, head.status_code, _header(head, b"connection")) == (name, status, None)
                conn.next_cycle()
            waits[name] = await conn.eof()

    with trio.fail_after(30):
        async with running_gateway(_config(tmp_path, keep_alive_timeout_s=idle_s)) as gw:
            async with trio.open_nursery() as nursery:
                for route in ROUTES:
                    nursery.start_soon(keep_then_idle, gw.url, *route)
    assert set(waits) == {route[0] for route in ROUTES}
    assert min(waits.values()) >= idle_s * 0.5  # closed by the idle timer, not at once


async def test_a_thousand_idle_keep_alive_connections_are_all_closed(tmp_path):
    # long enough that a connection whose request waits behind 99 others on a loaded
    # host is not taken for an idle one before its request is read
    idle_s = 3.0
    answered = closed = 0
    connecting = trio.CapacityLimiter(100)  # within the listen backlog: no SYN retries

    async def one(url: str) -> None:
        nonlocal answered, closed
        async with AsyncExitStack() as stack:
            async with connecting:  # a connection that waited idle here would be closed, rightly
                conn = await stack.enter_async_context(Conn.open(url))
                await conn.request("GET", "/healthz", [])
                head, _ = await conn.response()
            assert head.status_code == 200
            answered += 1
            await conn.eof()
            closed += 1

    with trio.fail_after(90):
        async with running_gateway(_config(tmp_path, keep_alive_timeout_s=idle_s)) as gw:
            async with trio.open_nursery() as nursery:
                for _ in range(1000):
                    nursery.start_soon(one, gw.url)
    assert (answered, closed) == (1000, 1000)


@pytest.mark.parametrize("method,path,headers", [r[1:4] for r in ROUTES[:4]], ids=[r[0] for r in ROUTES[:4]])
async def test_connection_close_gets_an_eof_right_after_the_answer(tmp_path, method, path, headers):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            await conn.request(method, path, [*headers, ("connection", "close")])
            head, _ = await conn.response()
            assert head.status_code in (200, 404)
            await conn.eof()


async def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_closed(tmp_path):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            await conn.send_raw(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                b"Authorization: Bearer " + DEMO_KEY.encode() + b"\r\n"
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            head, body = await conn.response()
            assert head.status_code == 400
            assert "Transfer-Encoding" in json.loads(body)["error"]["message"]
            await conn.eof()
            assert gw.ledger_entries() == []


async def test_an_h2c_upgrade_is_ignored_and_answered_in_http_1_1(tmp_path):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            await conn.request("GET", "/healthz", [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"),
                                                   ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")])
            head, body = await conn.response()
            assert (head.status_code, head.http_version, json.loads(body)) == (200, b"1.1", {"status": "ok"})
            conn.next_cycle()
            await conn.request("GET", "/healthz", [])  # still HTTP/1.1 on the same connection
            head, _ = await conn.response()
            assert head.status_code == 200


async def test_an_http2_preface_in_cleartext_is_refused(tmp_path):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            await conn.send_raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\n"):
                chunk = await conn.stream.receive_some(65536)
                assert chunk, f"closed without an answer after {data!r}"
                data += chunk
            assert data.startswith(b"HTTP/1.1 505 ")
            await conn.eof()


@pytest.mark.parametrize("path", ["/no/such/path", "/v1/chat/completions", "/healthz"])
async def test_a_websocket_upgrade_to_another_path_than_responses_is_a_json_404(tmp_path, path):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            await conn.request("GET", path, [("connection", "Upgrade"), ("upgrade", "websocket"),
                                             ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                             ("sec-websocket-version", "13")])
            head, body = await conn.response()
            assert head.status_code == 404
            assert _header(head, b"content-type") == b"application/json"
            assert json.loads(body)["error"]["type"] == "not_found_error"


DOORS = [
    ("chat", "/v1/chat/completions", lambda key: [("authorization", f"Bearer {key}")]),
    ("responses", "/v1/responses", lambda key: [("authorization", f"Bearer {key}")]),
    ("anthropic", "/v1/messages", lambda key: [("x-api-key", key)]),
    ("anthropic count", "/v1/messages/count_tokens", lambda key: [("x-api-key", key)]),
    ("gemini", "/v1beta/models/demo:generateContent?key={key}", lambda key: []),
]


@pytest.mark.parametrize("key", ["th-nobody", None], ids=["unknown key", "no key"])
@pytest.mark.parametrize("door,path,headers", DOORS, ids=[d[0] for d in DOORS])
async def test_a_stranger_is_refused_before_its_body_is_read(tmp_path, door, path, headers, key):
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path)) as gw, Conn.open(gw.url) as conn:
            target = path.format(key=key) if key else path.split("?")[0]
            # The head promises a body that is never sent: only the headers can be judged.
            await conn.request("POST", target, headers(key) if key else [], b"x" * 100_000, head_only=True)
            head, _ = await conn.response()
            assert (head.status_code, _header(head, b"connection")) == (401, b"close")
            await conn.send_raw(b"x" * 100_000)  # a client that sends its body anyway is not reset:
            await conn.eof()  # the body is read, dropped, and the connection closed
            assert gw.ledger_entries() == []


async def test_a_key_created_by_the_admin_api_is_known_at_once(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                                  json={"name": "fresh", "credit_usd": "1.00"})
            assert r.status_code == 201
            r = await client.post("/v1/chat/completions", content=CHAT,
                                  headers={"authorization": f"Bearer {r.json()['key']}"})
            assert r.status_code == 200


@pytest.mark.parametrize("door,path,headers", [d for d in DOORS if d[0] in ("chat", "gemini")] + [
    ("admin", "/admin/keys", lambda key: [("authorization", f"Bearer {ADMIN_TOKEN}")])], ids=["chat", "gemini", "admin"])
async def test_a_trickled_body_with_a_valid_key_is_cut_by_the_body_timeout(tmp_path, door, path, headers):
    body_s = 1.0
    with trio.fail_after(LONG / 2):
        async with running_gateway(_config(tmp_path, body_timeout_s=body_s)) as gw, Conn.open(gw.url) as conn:
            await conn.request("POST", path.format(key=DEMO_KEY), headers(DEMO_KEY), CHAT, head_only=True)
            start = trio.current_time()

            async def trickle():
                for byte in CHAT:  # one byte every 50 ms: far slower than the body timeout allows
                    await conn.send_raw(bytes([byte]))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                head, body = await conn.response()  # h11 reads an answer that comes before the body's end
                nursery.cancel_scope.cancel()
            await conn.send_raw(CHAT)  # the rest, and more: read and dropped, then the connection closed
            assert head.status_code == 408
            assert trio.current_time() - start >= body_s * 0.9
            assert _header(head, b"connection") == b"close"
            assert json.loads(body)
            await conn.eof()
            assert gw.ledger_entries() == []


async def test_a_request_head_sent_too_slowly_is_cut_by_the_read_timeout(tmp_path):
    head_s = 0.5
    with trio.fail_after(LONG / 4):
        async with running_gateway(_config(tmp_path, read_timeout_s=head_s)) as gw, Conn.open(gw.url) as conn:
            await conn.send_raw(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")  # and never the blank line
            assert await conn.eof() >= head_s * 0.9


async def test_a_stranger_uploading_a_large_body_reads_its_401_not_a_reset(tmp_path):
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x" * 5_000_000}]}).encode()
    with trio.fail_after(LONG / 2):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(3):
                r = await client.post("/v1/chat/completions", content=body,
                                      headers={"authorization": "Bearer th-nobody"})
                assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
