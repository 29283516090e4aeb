"""What every provider family shares: frames, the upstream call, error mapping.

A provider turns a unified request and a leased credential into an open upstream
stream read as batches of ``Frame``s: each frame keeps the exact upstream bytes
(``raw``, for same-protocol pass-through) beside the unified events decoded from them
(for metering and translation). Errors are mapped onto the one tree here, at the
boundary, before the first frame: a non-2xx answer is read (bounded), classified and
raised, so the dispatcher can still fail over. Whether the request reached the
upstream is the transport's finding (``http11.RequestNotSent`` / ``RequestBroken``),
carried on the error as ``request_sent``.

Upstream text never reaches a client or a log with a secret in it: each provider holds
the gateway's ``Redactor`` and hands it to ``send`` (error statuses, transport errors),
to ``FrameReader`` (from the first frame that carries an error on, its events' errors
and its raw bytes, which a same-protocol stream forwards) and to ``fetch_completion``
(a whole 200 body that holds an error object).
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Mapping, Protocol

import attrs
import trio

from providers import http11
from providers.seams import Credential
from providers.propagation import with_trace
from providers.trace_hook import transform_trace

from protocols import json_codec
from protocols.json_array import JsonArraySplitter
from protocols.errors import (
    InvalidRequest,
    UpstreamConnectionsBusy,
    UpstreamProtocolError,
    UpstreamServerError,
    classify_upstream,
)
from protocols.redact import NO_SECRETS, Redactor
from protocols.retry_after import retry_after
from protocols.seams import StreamDecoder
from protocols.sse import EventTooLarge, SSEDecoder, SSEEvent
from protocols.stream_end import reached_terminal
from protocols.unified import ErrorEvent, UnifiedResponse

MAX_ERROR_BODY = 64 * 1024
WHOLE_TAIL_S = 0.25  # after a whole answer's JSON closed, how long its body may take to end


@attrs.frozen
class Frame:
    """One upstream event: its bytes as sent, its unified events, and whether the
    gateway must not forward it (a chunk that exists only because it injected a flag)."""

    raw: bytes
    events: tuple
    drop: bool = False
    payload: bytes | None = None  # the undecoded data of a frame with no events (light decoding)


@attrs.frozen
class Completion:
    """A non-streaming upstream answer: the body as sent and its parsed form."""

    body: bytes
    response: UnifiedResponse
    content_type: str = "application/json"


class Framer(Protocol):
    @property
    def decoder(self) -> StreamDecoder: ...


    def feed(self, chunk: bytes) -> list[Frame]: ...
    def close(self) -> list[Frame]: ...


class SSEFramer:
    """SSE bytes -> frames, through a protocol's ``StreamDecoder``."""

    def __init__(self, decoder: StreamDecoder, drop_usage_only: bool = False) -> None:
        self.sse = SSEDecoder()
        self.decoder = decoder
        self.drop_usage_only = drop_usage_only

    def _frames(self, events: list) -> list[Frame]:
        decoder = self.decoder
        out = []
        for ev in events:
            if decoder.ended:
                break  # the protocol's last event came: what follows it is not the answer
            unified = decoder.feed(ev)
            drop = self.drop_usage_only and getattr(decoder, "usage_only", False)
            out.append(Frame(ev.raw, tuple(unified), drop, None if unified else ev.data))
        return out

    def feed(self, chunk: bytes) -> list[Frame]:
        return self._frames(self.sse.feed(chunk))

    def close(self) -> list[Frame]:
        return self._frames(self.sse.close())


class ErrorRedaction:
    """Frames as they may leave the gateway: untouched until one carries an error (the
    upstream's text may quote its key); that one and every later one with its bytes,
    undecoded payload and error messages redacted. One per upstream stream."""

    def __init__(self, redactor: Redactor = NO_SECRETS) -> None:
        self.redactor = redactor
        self.errored = False  # an error frame has been read: every frame from it on is redacted

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        if not self.errored and not any(isinstance(ev, ErrorEvent) for f in frames for ev in f.events):
            return frames
        out = []
        for frame in frames:
            if not self.errored and not any(isinstance(ev, ErrorEvent) for ev in frame.events):
                out.append(frame)
                continue
            self.errored = True
            for ev in frame.events:
                if isinstance(ev, ErrorEvent):
                    self.redactor.error(ev.error)
            payload = frame.payload if frame.payload is None else self.redactor.any(frame.payload)
            out.append(attrs.evolve(frame, raw=self.redactor.bytes(frame.raw), payload=payload))
        return out


def redecode(decoder: Any, payloads: list) -> list:
    """Frames that were forwarded undecoded, decoded in full by a fresh decoder of the
    stream's kind (for a partial charge)."""
    full = type(decoder)(light=False)
    full.started = True
    events: list = []
    for data in payloads:
        events.extend(full.feed(SSEEvent(b"", data)))
    return events


class FrameReader:
    """Pulls batches of frames from an open upstream response; one batch per read."""

    def __init__(self, response: http11.Response, framer: Framer, redactor: Redactor = NO_SECRETS) -> None:
        self.response = response
        self.framer = framer
        self.redactor = redactor
        self._done = False
        self._redacted = ErrorRedaction(redactor)

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "text/event-stream")

    @property
    def decoder(self) -> StreamDecoder:
        return self.framer.decoder

    @property
    def terminal(self) -> bool:
        """The upstream protocol's own last event arrived (or, where the protocol has
        none, the body ended cleanly after the finish)."""
        return reached_terminal(self.framer.decoder, self._done)

    def redecode(self, payloads: list) -> list:
        """Frames that were forwarded undecoded, decoded in full (for a partial charge)."""
        return redecode(self.framer.decoder, payloads)

    async def next_batch(self) -> list[Frame] | None:
        """The frames completed by the next read; None at the end of the body."""
        while not self._done:
            try:
                chunk = await self.response.receive()
            except http11.RequestBroken as exc:
                raise UpstreamServerError(self.redactor.text(f"upstream connection failed mid-stream: {exc}"),
                                          request_sent=True) from None
            if chunk is None:
                self._done = True
                return self._redacted(self.framer.close()) or None
            try:
                frames = self.framer.feed(chunk)
            except EventTooLarge as exc:
                raise UpstreamProtocolError(f"upstream stream rejected: {exc}") from None
            if frames:
                return self._redacted(frames)
        return None

    async def aclose(self) -> None:
        """Close at once, even inside a cancelled scope: the connection must not leak."""
        await self.response.aclose()


def parse_json(body: bytes, parse: Callable[[Any], UnifiedResponse]) -> UnifiedResponse:
    """A non-streaming upstream body through a protocol's ``parse_response``."""
    return _parse_doc(_json_doc(body), parse, len(body))


def _json_doc(body: bytes) -> Any:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise Unparseable("upstream answered with a body that is not JSON", len(body)) from None
    if not isinstance(doc, (dict, list)):
        raise Unparseable("upstream answered with unexpected JSON", len(body))
    return doc


def _parse_doc(doc: Any, parse: Callable[[Any], UnifiedResponse], size: int) -> UnifiedResponse:
    try:
        return parse(doc)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise Unparseable(f"upstream answer could not be read: {type(exc).__name__}", size) from None


class Unparseable(UpstreamProtocolError):
    """A success answer whose body is not the protocol's: the upstream worked, the
    gateway cannot say how much; ``body_bytes`` is the size it was."""

    def __init__(self, message: str, body_bytes: int) -> None:
        super().__init__(message, upstream_status=200)
        self.body_bytes = body_bytes


def bearer_headers(credential: Credential, extra: Mapping[str, str]) -> dict:
    """OpenAI-style auth; upstream bytes are asked for uncompressed so they can be
    forwarded as they are."""
    return {
        "authorization": f"Bearer {credential.secret.value}",
        "content-type": "application/json",
        "accept-encoding": "identity",
        **extra,
    }


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The upstream request's bytes; a body that cannot be written (nested past the
    interpreter's limit) is the client's error, found before anything is sent.

    Copied to its own size (``json_codec.right_sized``): these bytes live as long as the
    call, a stream's whole length, and orjson's block around them is many times larger."""
    try:
        return json_codec.right_sized(json_codec.dumps_bytes(body))
    except (RecursionError, UnicodeEncodeError):
        raise InvalidRequest("The request cannot be encoded for the upstream: it is nested too deeply "
                             "or holds text that is not valid Unicode.") from None


class Answer:
    """A response as providers see it: status, headers, and (non-streaming) the body."""

    __slots__ = ("response", "status_code", "headers", "content")

    def __init__(self, response: http11.Response, content: bytes = b"") -> None:
        self.response = response
        self.status_code = response.status
        self.headers = response.headers
        self.content = content


async def send(client: http11.Pool, url: str, headers: Mapping[str, str], body: bytes,
               *, stream: bool, redactor: Redactor = NO_SECRETS) -> Any:
    """POST to the upstream; return an open 2xx response (``stream``) or the whole
    answer, or raise the classified error (redacted: a transport error may quote a
    header value, an error body the key)."""
    trace = transform_trace.get()  # None unless the request is traced
    if trace is not None:
        trace.sent(url, headers, body)
    try:
        response = await client.request("POST", url, with_trace(headers).items(), body)
    except http11.PoolBusy as exc:
        raise UpstreamConnectionsBusy(redactor.text(f"the gateway's connections to the upstream are busy: {exc}"),
                                      request_sent=False, retry_after=1.0) from None
    except http11.RequestNotSent as exc:
        raise UpstreamServerError(redactor.text(f"cannot reach the upstream: {exc}"), request_sent=False) from None
    except http11.RequestBroken as exc:
        raise UpstreamServerError(redactor.text(f"upstream connection failed: {exc}"), request_sent=True) from None
    if not 200 <= response.status < 300:
        try:
            content = await response.read(MAX_ERROR_BODY)
        except http11.RequestBroken:
            content = b""
        finally:
            await response.aclose()
        if trace is not None:
            trace.answered(response.status, response.headers, content)
        raise classify_upstream(response.status, content, response.headers,
                                retry_after(response.headers, content, time.time()), redactor)
    if stream:
        if trace is not None:
            trace.answered(response.status, response.headers, None)  # its events follow, frame by frame
        return response
    limit = client.max_body_bytes
    try:
        if "content-length" in response.headers:
            content = await response.read(limit + 1)
        else:
            content = await _read_json_value(response, limit + 1)
    except http11.RequestBroken as exc:
        raise UpstreamServerError(redactor.text(f"upstream connection failed: {exc}"), request_sent=True) from None
    finally:
        await response.aclose()  # past the bound, this closes the connection mid-body
    if trace is not None:
        trace.answered(response.status, response.headers, content)
    if len(content) > limit:
        raise Unparseable(f"upstream answer exceeded the {limit}-byte bound", len(content))
    return Answer(response, content)


async def _read_json_value(response: http11.Response, limit: int) -> bytes:
    """A chunked whole answer, read until its JSON value closes (then briefly for the
    end of its body, so a well-behaved upstream's connection can be reused): an
    upstream that sent its answer but keeps the body open is not waited for until the
    request's deadline, and the whitespace it sent after the value (up to the bound, for
    at most ``WHOLE_TAIL_S``) is dropped, so the answer is the value, however fast the
    upstream padded it. Scanning is linear (``JsonArraySplitter``), however the body is
    chunked."""
    parts: list[bytes] = []
    size = 0
    scanner = JsonArraySplitter()
    while True:
        chunk = await response.receive()
        if chunk is None:
            break
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
        scanner.feed(chunk)
        if scanner.complete:
            with trio.move_on_after(WHOLE_TAIL_S):
                while size < limit and (chunk := await response.receive()) is not None:
                    parts.append(chunk)
                    size += len(chunk)
            # what followed the value is only read to end the body: whitespace an upstream
            # kept sending is not part of the answer (anything else still makes it unreadable)
            return b"".join(parts).rstrip(b" \t\r\n")
    return b"".join(parts)


@asynccontextmanager
async def reading(response: http11.Response, framer: Framer,
                  redactor: Redactor = NO_SECRETS) -> AsyncIterator[FrameReader]:
    """Frames from an open response, which is closed on exit however the block ends."""
    reader = FrameReader(response, framer, redactor)
    try:
        yield reader
    finally:
        await reader.aclose()


class OpenFrames:
    """An upstream stream: the request sent, its frames read, the response closed on exit.

    A class, not an ``asynccontextmanager``: that keeps its arguments for as long as the
    ``async with`` lasts, and the body is let go once sent (never sent again: the server
    may have read it), so an open stream does not keep it (50 KB and more for an agent's
    request)."""

    def __init__(self, client: http11.Pool, url: str, headers: Mapping[str, str], body: bytes,
                 framer: Framer, redactor: Redactor = NO_SECRETS) -> None:
        self._send: tuple | None = (client, url, headers, body)
        self._framer = framer
        self._redactor = redactor
        self._reading: Any = None

    async def __aenter__(self) -> FrameReader:
        assert self._send is not None, "OpenFrames is entered once"
        client, url, headers, body = self._send
        self._send = None
        response = await send(client, url, headers, body, stream=True, redactor=self._redactor)
        del body
        self._reading = reading(response, self._framer, self._redactor)
        return await self._reading.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._reading.__aexit__(*exc)


async def fetch_completion(client: http11.Pool, url: str, headers: Mapping[str, str], body: bytes,
                           parse: Callable[[Any], UnifiedResponse],
                           redactor: Redactor = NO_SECRETS) -> Completion:
    """A non-streaming call: the body as sent, and parsed by the protocol's ``parse_response``.
    A success body that holds an error object (a failed Responses answer) is forwarded
    redacted; any other is forwarded as sent."""
    answer = await send(client, url, headers, body, stream=False, redactor=redactor)
    content = answer.content
    doc = _json_doc(content)
    if isinstance(doc, dict) and doc.get("error"):
        content = redactor.bytes(content)
    return Completion(content, _parse_doc(doc, parse, len(content)),
                      answer.headers.get("content-type", "application/json"))
