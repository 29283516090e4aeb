"""Transform traces: every state of one chosen request, from the client's body to the
client's answer, for ``GET /admin/traces/{request_id}``.

A request is traced when ``trace.enabled`` and one of: it carries the trace header
with the value ``1``, its gateway key's name is in ``trace.keys``, or it is drawn by
``trace.sample_ratio``; with ``errors_only``, a chosen request is written only when it
failed (an error answer or an in-stream error). The choice is made once the key is
known (after the reservation): a call refused before it is not traced. Untraced, a
request pays one boolean check (``TransformTraces.enabled``) and carries ``None``.

The passes, in order (``Pass``): ``received`` (the client's body), ``unified`` (the
``UnifiedRequest``), then per attempt ``adapter`` (the wire body as the provider built
it, ``(built)``, then after each adapter of the target's chain, in its fixed order),
``sent`` (URL, headers, body), ``upstream`` (status, headers, and the body or the
stream's event sequence), ``unified_answer`` (the unified response or events, after
the answer adapters), and last ``client`` (status, headers, body or event sequence).

Secrets leave structurally first -- credential-like headers (``authorization``,
``x-api-key``, ``x-goog-api-key``, ``api-key`` ...), credential-like URL query
parameters (``?key=``), and key fields in bodies -- and then the whole line goes
through the gateway's ``Redactor``, which also scrubs upstream free text (error
messages that quote a key).

Size: each pass keeps at most an eighth of ``max_bytes_per_request`` (a whole body
keeps its first bytes as text, an event sequence its first events and a count of the
rest), and once the request has used ``max_bytes_per_request`` later passes keep only
their size; each is marked ``truncated``. Lines are serialised here (only for traced
requests) and written by ``gateway.trace_file`` off the event loop.
"""

from __future__ import annotations

import enum
import json
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio

from gateway.redaction import is_secret_header
from gateway.trace_file import TraceFile
from protocols.errors import GatewayError, GatewayFailure
from protocols.redact import REDACTED, Redactor
from protocols.secret import Secret

#: body fields whose value is a credential, wherever they sit (lower-cased names)
SECRET_FIELDS = frozenset({"key", "api_key", "apikey", "api-key", "x-api-key", "x-goog-api-key", "authorization",
                           "access_token", "refresh_token", "client_secret", "secret", "password", "token"})


class Pass(enum.StrEnum):
    RECEIVED = "received"
    UNIFIED = "unified"
    ADAPTER = "adapter"
    SENT = "sent"
    UPSTREAM = "upstream"
    UNIFIED_ANSWER = "unified_answer"
    CLIENT = "client"


class Reason(enum.StrEnum):
    """Why a request was traced."""

    HEADER = "header"
    KEY = "key"
    SAMPLE = "sample"


# ------------------------------------------------------------------ secrets out, structurally

def scrub_headers(headers: Mapping[str, str] | list) -> dict:
    """Headers without credential values (the names stay, so a trace shows they were sent)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = {}
    for name, value in items:
        if isinstance(name, bytes):
            name, value = name.decode("latin-1"), value.decode("latin-1")
        out[name] = REDACTED if is_secret_header(name) else value
    return out


def scrub_url(url: str) -> str:
    """The URL without credential-like query parameters (Gemini's ``?key=``) or userinfo."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = urlencode([(k, REDACTED if is_secret_header(k) else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def scrub_fields(value: Any) -> Any:
    """A JSON-like value with every credential field's value replaced."""
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and k.lower() in SECRET_FIELDS and isinstance(v, (str, bytes))
                else scrub_fields(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_fields(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """A unified value (attrs classes, enums, tuples, bytes) as plain JSON; an attrs
    instance names its class as ``type``. The request's ``raw`` body is left out (it is
    the ``received`` pass)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        out: dict[str, Any] = {"type": type(value).__name__}
        for field in attrs.fields(type(value)):
            if field.name != "raw":
                out[field.name] = jsonable(getattr(value, field.name))
        return out
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "message": str(value)}
    return repr(value)


def _body(data: bytes) -> Any:
    """A wire body as JSON when it is JSON, else as text."""
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


_EVENT_END = re.compile(rb"\r?\n\r?\n")


# ------------------------------------------------------------------ one request's recorder

class EventLog:
    """One pass that is a sequence (a stream's events): its first events, within ``cap``
    bytes, and how many did not fit."""

    def __init__(self, head: dict, cap: int) -> None:
        self.head = head
        self.cap = cap
        self.items: list[str] = []
        self.used = 0
        self.dropped = 0

    def add(self, value: Any) -> None:
        text = _dumps(value)
        if self.used + len(text) + 1 > self.cap:
            self.dropped += 1
            return
        self.items.append(text)
        self.used += len(text) + 1

    def render(self) -> str:
        head = {**self.head, "truncated": self.dropped > 0}
        if self.dropped:
            head["events_dropped"] = self.dropped
        return _dumps(head)[:-1] + ', "events": [' + ",".join(self.items) + "]}"


class Trace:
    """The passes of one traced request, each recorded as it happens (the
    ``providers.trace_hook.TraceHook`` of its attempts)."""

    def __init__(self, request_id: str, reason: Reason, limit: int) -> None:
        self.request_id = request_id
        self.reason = reason
        self.share = max(limit // 8, 64)
        self.left = limit
        self.states: list[str | EventLog] = []
        self.attempt: int | None = None
        self._upstream: EventLog | None = None
        self._unified: EventLog | None = None
        self._client: EventLog | None = None
        self.client_done = False
        self._target: tuple[str | None, str | None] = (None, None)
        self._client_head: tuple[int | None, dict] = (None, {})
        self.at = time.time()

    # --- recording

    def _head(self, kind: Pass, fields: Mapping[str, Any]) -> dict:
        head: dict[str, Any] = {"pass": kind.value}
        if self.attempt is not None and kind is not Pass.CLIENT:
            head["attempt"] = self.attempt
        head.update(fields)
        return head

    def state(self, kind: Pass, **fields: Any) -> None:
        text = _dumps(self._head(kind, fields))
        cap = min(self.share, max(self.left, 0))
        if len(text) > cap:
            text = _dumps({**self._head(kind, {}), "truncated": True, "bytes": len(text),
                           "head": text[:max(cap - 120, 0)]})
        self.left -= len(text)
        self.states.append(text)

    def sequence(self, kind: Pass, **fields: Any) -> EventLog:
        cap = min(self.share, max(self.left, 0))
        self.left -= cap  # reserved; what it did not use comes back when it is rendered
        log = EventLog(self._head(kind, fields), cap)
        self.states.append(log)
        return log

    def begin_attempt(self, index: int, target: str, credential: str) -> None:
        self.attempt = index
        self._upstream = self._unified = None
        self._target = (target, credential)

    # TraceHook (providers.trace_hook), called by the providers inside the attempt

    def adapted(self, name: str, body: Mapping[str, Any]) -> None:
        self.state(Pass.ADAPTER, adapter=name, body=scrub_fields(body))

    def sent(self, url: str, headers: Mapping[str, str], body: bytes) -> None:
        target, credential = self._target
        self.state(Pass.SENT, target=target, credential=credential, url=scrub_url(url),
                   headers=scrub_headers(headers), body=scrub_fields(_body(body)))

    def answered(self, status: int, headers: Mapping[str, str], body: bytes | None) -> None:
        if body is None:
            self._upstream = self.sequence(Pass.UPSTREAM, status=status, headers=scrub_headers(headers))
            self._unified = self.sequence(Pass.UNIFIED_ANSWER)
        else:
            self.state(Pass.UPSTREAM, status=status, headers=scrub_headers(headers), body=scrub_fields(_body(body)))

    # the attempt's own passes

    def frame(self, raw: bytes, events: tuple) -> None:
        """One upstream stream event as sent, and the unified events the client's side got from it."""
        if self._unified is None:  # a stream not opened by ``send`` (an upstream WebSocket's turn)
            self._upstream = self.sequence(Pass.UPSTREAM)
            self._unified = self.sequence(Pass.UNIFIED_ANSWER)
        if self._upstream is not None and raw:
            self._upstream.add(raw.decode("utf-8", "replace").strip())
        if self._unified is not None:
            for ev in events:
                self._unified.add(jsonable(ev))

    def answer(self, response: Any) -> None:
        self.state(Pass.UNIFIED_ANSWER, response=jsonable(response))

    # the client's side (``TracedLink``)

    def client_started(self, status: int, headers: list) -> None:
        head = scrub_headers(headers)
        if head.get("content-type", "").startswith("text/event-stream"):
            self._client = self.sequence(Pass.CLIENT, status=status, headers=head)
        else:
            self._client_head = (status, head)

    def client_bytes(self, data: bytes, last: bool) -> None:
        if self._client is not None:
            for piece in _EVENT_END.split(data):
                if piece.strip():
                    self._client.add(piece.decode("utf-8", "replace"))
        elif last and not self.client_done:
            status, head = self._client_head
            self.state(Pass.CLIENT, status=status, headers=head, body=_body(data))
        if last:
            self.client_done = True

    def client_error(self, err: GatewayError, client: Any) -> None:
        """The error answer the front door renders (the dispatcher raised it before any byte)."""
        if not self.client_done:
            self.client_done = True
            self.state(Pass.CLIENT, status=err.status, body=client.format_error(err))

    # --- the line

    def line(self, fields: Mapping[str, Any]) -> str:
        parts = []
        for state in self.states:
            if isinstance(state, EventLog):
                self.left += state.cap - state.used
                parts.append(state.render())
            else:
                parts.append(state)
        head = {"request_id": self.request_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                "reason": self.reason.value, **fields}
        return _dumps(head)[:-1] + ', "states": [' + ",".join(parts) + "]}"


class TracedLink:
    """The client's link of a traced request: what the client is sent is recorded as it goes."""

    def __init__(self, link: Any, trace: Trace) -> None:
        self._link = link
        self._trace = trace

    async def start(self, status: int, headers: list) -> None:
        self._trace.client_started(status, headers)
        await self._link.start(status, headers)

    async def write(self, data: bytes) -> None:
        self._trace.client_bytes(data, False)
        await self._link.write(data)

    async def end(self, data: bytes = b"") -> None:
        self._trace.client_bytes(data, True)
        await self._link.end(data)

    async def wait_disconnect(self) -> None:
        await self._link.wait_disconnect()

    @property
    def disconnect(self) -> Any:
        return self._link.disconnect

    @property
    def ended(self) -> bool:
        return self._link.ended


# ------------------------------------------------------------------ the gateway's side

class TransformTraces:
    """Chooses the requests to trace and hands their lines to the trace file.

    ``enabled`` is the hot path's one check; ``configure`` (told each reloaded config)
    replaces the settings."""

    def __init__(self, settings: Any, state_dir: str, redactor: Callable[[], Redactor],
                 siblings: Path | None = None) -> None:
        self.file = TraceFile(state_dir, settings.max_file_bytes, settings.search_days, redactor, siblings)
        self._random = random.Random()
        self._running: dict[str, trio.Event] = {}  # traced requests not yet finished, by id
        self.configure_settings(settings)

    def configure_settings(self, settings: Any) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.header = settings.header.lower().encode("latin-1")
        self.keys = frozenset(settings.keys)
        self.file.max_file_bytes = settings.max_file_bytes
        self.file.search_days = settings.search_days

    def configure(self, config: Any) -> None:
        self.configure_settings(config.trace)

    def asked(self, headers: list) -> bool:
        """Whether the client asked for a trace (the header, with the value ``1``)."""
        for name, value in headers:
            if name == self.header:
                return value.strip() == b"1"
        return False

    def choose(self, call: Any, key_name: str | None) -> Trace | None:
        """The request's trace, when it is chosen; its first two passes recorded."""
        if call.trace_asked:
            reason = Reason.HEADER
        elif key_name is not None and key_name in self.keys:
            reason = Reason.KEY
        elif self.settings.sample_ratio > 0 and self._random.random() < self.settings.sample_ratio:
            reason = Reason.SAMPLE
        else:
            return None
        trace = Trace(call.request_id, reason, self.settings.max_bytes_per_request)
        self._running[call.request_id] = trio.Event()
        request = call.request
        trace.state(Pass.RECEIVED, body=scrub_fields(call.received if call.received is not None else request.raw))
        trace.state(Pass.UNIFIED, request=scrub_fields(jsonable(request)))
        return trace

    def finish(self, req: Any, error: BaseException | None) -> None:
        """Write the request's trace (unless ``errors_only`` and it did not fail)."""
        try:
            self._finish(req, error)
        finally:
            done = self._running.pop(req.id, None)
            if done is not None:
                done.set()

    async def written(self, request_id: str) -> None:
        """Return once the trace of ``request_id`` -- if it is being recorded -- and every
        line submitted before it are written (a client may ask for a trace as soon as it has
        its answer, before its request's task has ended)."""
        running = self._running.get(request_id)
        if running is not None:
            await running.wait()
        await self.file.flush()

    def _finish(self, req: Any, error: BaseException | None) -> None:
        trace: Trace = req.transform
        call = req.call
        failure = error if isinstance(error, GatewayError) else (
            GatewayFailure(f"The gateway failed to serve this request ({req.id}).") if isinstance(error, Exception)
            else None)
        failed = failure is not None or req.meter.error is not None
        if self.settings.errors_only and not failed:
            return
        if failure is not None and not req.started:
            trace.client_error(failure, call.client)
        shown = failure or req.meter.error
        self.file.submit(trace.line({
            "key": req.key_name, "protocol": call.request.protocol, "transport": call.transport.value,
            "model": call.request.model, "stream": call.request.stream, "failed": failed,
            "error": None if shown is None else {"type": type(shown).__name__,
                                                 "status": getattr(shown, "status", None)},
        }))
