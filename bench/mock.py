"""A lean OpenAI Chat Completions upstream for speed runs: raw trio sockets, no framework.

The project's simulator (hypercorn + full codecs) would cost more CPU per request than
the gateway it feeds, so the bench measures against this instead. It parses only what
it needs (request line, content-length / chunked body, three regexes over the body)
and answers from pre-rendered bytes.

What the reply looks like is chosen by a directive inside the request's text, because
that is the one thing every gateway forwards unchanged::

    bench:events=64,pace_ms=20,hold=g1

``events``  non-streaming: words in the reply; streaming: content events (max, with hold)
``pace_ms`` streaming: the first event goes out at once, event i at i * pace_ms
``hold``    streaming: keep sending events (up to ``events``) until ``POST
            /mock/release?group=g1`` -- how the memory scenario holds streams open

Usage is deterministic (``prompt_tokens`` = 12, ``completion_tokens`` = content
events sent), and so is every byte (fixed id and created), so a client can compare a
stream byte for byte with :func:`expected_stream`. ``GET /mock/stats`` reports the
usage the mock has put on the wire, which the bench compares with the gateway's ledger.

Run: ``python -m bench.mock --port 9000``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import trio

PROMPT_TOKENS = 12
CHUNK_ID = "chatcmpl-bench"
CREATED = 1700000000
MODEL = "mock"

_DIRECTIVE = re.compile(rb"bench:((?:[a-z_]+=[A-Za-z0-9_.\-]+,?)+)")
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_TE_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked")
_CONN_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close")

STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def parse_directive(body: bytes) -> dict:
    m = _DIRECTIVE.search(body)
    out: dict = {}
    if m:
        for part in m.group(1).decode().split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k] = v
    return out


def word(i: int) -> str:
    return f"w{i} "


def expected_text(events: int) -> str:
    return "".join(word(i) for i in range(events))


def _chunk_json(delta: dict, finish: str | None) -> str:
    return json.dumps({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]},
                      separators=(",", ":"))


def content_event(i: int) -> bytes:
    delta = {"role": "assistant", "content": word(i)} if i == 0 else {"content": word(i)}
    return f"data: {_chunk_json(delta, None)}\n\n".encode()


def usage_doc(completion: int) -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion}


def tail_events(sent: int, include_usage: bool) -> bytes:
    out = f"data: {_chunk_json({}, 'stop')}\n\n"
    if include_usage:
        doc = {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
               "choices": [], "usage": usage_doc(sent)}
        out += f"data: {json.dumps(doc, separators=(',', ':'))}\n\n"
    out += "data: [DONE]\n\n"
    return out.encode()


def expected_stream(events: int, include_usage: bool) -> bytes:
    """The exact SSE body (after de-chunking) of a stream that ran to the end."""
    return b"".join(content_event(i) for i in range(events)) + tail_events(events, include_usage)


def completion_body(events: int) -> bytes:
    doc = {"id": CHUNK_ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": expected_text(events)},
                        "finish_reason": "stop"}],
           "usage": usage_doc(events)}
    return json.dumps(doc, separators=(",", ":")).encode()


def _http(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n".encode()
            + b"content-type: " + content_type + b"\r\n\r\n" + body)


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.completions = 0
        self.streams = 0
        self.streams_done = 0
        self.streams_aborted = 0
        self.active_streams = 0
        self.peak_streams = 0
        self.connections = 0
        self.open_connections = 0
        self.prompt_tokens = 0        # usage put on the wire (bodies and usage chunks)
        self.completion_tokens = 0
        self.usage_reports = 0

    def doc(self) -> dict:
        return dict(vars(self))


class Mock:
    def __init__(self) -> None:
        self.stats = Stats()
        self.groups: dict[str, trio.Event] = {}
        self._completions: dict[int, bytes] = {}

    # ------------------------------------------------------------ connection

    async def handle(self, stream: trio.SocketStream) -> None:
        st = self.stats
        st.connections += 1
        st.open_connections += 1
        buf = b""
        try:
            while True:
                i = buf.find(b"\r\n\r\n")
                while i < 0:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    i = buf.find(b"\r\n\r\n")
                head, buf = buf[: i + 2], buf[i + 4:]
                lower = head.lower()
                m = _CL.search(lower)
                if m:
                    n = int(m.group(1))
                    while len(buf) < n:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buf += data
                    body, buf = buf[:n], buf[n:]
                elif _TE_CHUNKED.search(lower):
                    body, buf = await _read_chunked(stream, buf)
                else:
                    body = b""
                line_end = head.find(b"\r\n")
                parts = head[:line_end].split(b" ")
                method, target = parts[0], parts[1] if len(parts) > 1 else b"/"
                await self.route(stream, method, target, body)
                if _CONN_CLOSE.search(lower):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return
        except Exception as exc:  # a malformed request must not take the mock down
            print(f"mock: dropped a connection: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return
        finally:
            st.open_connections -= 1
            with trio.move_on_after(1):
                await stream.aclose()

    async def route(self, stream, method: bytes, target: bytes, body: bytes) -> None:
        self.stats.requests += 1
        path, _, query = target.partition(b"?")
        if method == b"POST" and path.endswith(b"/chat/completions"):
            params = parse_directive(body)
            if _STREAM.search(body):
                await self.stream(stream, params, bool(_USAGE.search(body)))
            else:
                await self.complete(stream, params)
        elif path == b"/mock/stats":
            await stream.send_all(_http("200 OK", json.dumps(self.stats.doc()).encode()))
        elif method == b"POST" and path == b"/mock/release":
            group = dict(p.split(b"=", 1) for p in query.split(b"&") if b"=" in p).get(b"group", b"").decode()
            ev = self.groups.pop(group, None)
            if ev is not None:
                ev.set()
            await stream.send_all(_http("200 OK", b'{"released":%s}' % (b"true" if ev is not None else b"false")))
        elif path.endswith(b"/models"):
            await stream.send_all(_http("200 OK", b'{"object":"list","data":[{"id":"mock","object":"model"}]}'))
        elif path in (b"/health", b"/"):
            await stream.send_all(_http("200 OK", b'{"ok":true}'))
        else:
            print(f"mock: 404 for {method.decode()} {target.decode(errors='replace')}", file=sys.stderr, flush=True)
            await stream.send_all(_http("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}'))

    async def complete(self, stream, params: dict) -> None:
        events = int(params.get("events", 8))
        body = self._completions.get(events)
        if body is None:
            body = self._completions[events] = _http("200 OK", completion_body(events))
        st = self.stats
        st.completions += 1
        st.prompt_tokens += PROMPT_TOKENS
        st.completion_tokens += events
        st.usage_reports += 1
        await stream.send_all(body)

    async def stream(self, stream, params: dict, include_usage: bool) -> None:
        events = max(1, int(params.get("events", 16)))
        pace = float(params.get("pace_ms", 20)) / 1000.0
        hold = None
        if "hold" in params:
            hold = self.groups.setdefault(params["hold"], trio.Event())
        st = self.stats
        st.streams += 1
        st.active_streams += 1
        st.peak_streams = max(st.peak_streams, st.active_streams)
        sent = 0
        try:
            await stream.send_all(STREAM_HEAD + _frame(content_event(0)))
            sent = 1
            t0 = trio.current_time()
            for i in range(1, events):
                if hold is not None:
                    with trio.move_on_at(t0 + i * pace):
                        await hold.wait()
                    if hold.is_set():
                        break
                else:
                    await trio.sleep_until(t0 + i * pace)
                await stream.send_all(_frame(content_event(i)))
                sent += 1
            await stream.send_all(_frame(tail_events(sent, include_usage)) + b"0\r\n\r\n")
            if include_usage:
                st.prompt_tokens += PROMPT_TOKENS
                st.completion_tokens += sent
                st.usage_reports += 1
            st.streams_done += 1
        except BaseException:
            st.streams_aborted += 1
            raise
        finally:
            st.active_streams -= 1


async def _read_chunked(stream, buf: bytes) -> tuple[bytes, bytes]:
    out = []
    while True:
        i = buf.find(b"\r\n")
        while i < 0:
            buf += await _recv(stream)
            i = buf.find(b"\r\n")
        size = int(buf[:i].split(b";")[0], 16)
        buf = buf[i + 2:]
        if size == 0:
            while buf.find(b"\r\n") < 0:
                buf += await _recv(stream)
            # trailers (rare) end with an empty line
            while not buf.startswith(b"\r\n"):
                j = buf.find(b"\r\n")
                buf = buf[j + 2:]
                while buf.find(b"\r\n") < 0:
                    buf += await _recv(stream)
            return b"".join(out), buf[2:]
        while len(buf) < size + 2:
            buf += await _recv(stream)
        out.append(buf[:size])
        buf = buf[size + 2:]


async def _recv(stream) -> bytes:
    data = await stream.receive_some(65536)
    if not data:
        raise trio.BrokenResourceError("peer closed mid-body")
    return data


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    mock = Mock()
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(mock.handle, listeners)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.mock", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)

    async def run():
        async with trio.open_nursery() as n:
            port = await n.start(serve, args.host, args.port)
            print(f"mock listening on http://{args.host}:{port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
