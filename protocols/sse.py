"""Incremental Server-Sent Events: bytes in, events out; and the encoder.

The decoder keeps every byte: each event carries ``raw``, the exact bytes it spanned
(its lines and the blank line that ended it), so a gateway forwarding the stream can
write the concatenation of ``raw`` and reproduce the upstream byte for byte, while
still looking inside the events it cares about. Comment-only blocks (``: ping``) come
out as events with ``data is None`` for the same reason.

Each byte is scanned once (``find`` resumes where the last call stopped), so an event
of many megabytes arriving in small chunks costs linear time. Lines end in ``\\n`` or
``\\r\\n``; a bare ``\\r`` line ending (allowed by the spec, used by no provider) is not
treated as a line break.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SSEEvent:
    """One dispatched event. ``data`` is the joined data lines (None: no data field)."""

    raw: bytes
    data: bytes | None = None
    event: str | None = None
    id: str | None = None


MAX_EVENT_BYTES = 16 * 1024 * 1024


class EventTooLarge(ValueError):
    """One event (or the bytes since the last one: comment lines included) outgrew the bound."""


class SSEDecoder:
    __slots__ = ("_buf", "_scan", "_line_start", "_data", "_event", "_id", "_has_field", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._scan = 0  # next byte not yet searched for a newline
        self._line_start = 0  # start of the line being assembled
        self._reset_fields()

    def _reset_fields(self) -> None:
        self._data: list[bytes] | None = None
        self._event: str | None = None
        self._id: str | None = None
        self._has_field = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events they completed (possibly none)."""
        buf = self._buf
        buf += chunk
        out: list[SSEEvent] = []
        find = buf.find
        while True:
            nl = find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(buf)
                if len(buf) > self.max_event_bytes:
                    raise EventTooLarge(f"an event exceeded {self.max_event_bytes} bytes")
                break
            end = nl - 1 if nl > self._line_start and buf[nl - 1] == 13 else nl
            self._scan = nl + 1
            if end == self._line_start:
                out.append(self._dispatch(nl + 1))
            else:
                self._field(bytes(buf[self._line_start:end]))
                self._line_start = nl + 1
                if self._line_start > self.max_event_bytes:
                    raise EventTooLarge(f"an event exceeded {self.max_event_bytes} bytes")
        return out

    def close(self) -> list[SSEEvent]:
        """End of input: flush a last event that had no terminating blank line."""
        if not self._buf:
            return []
        if self._line_start < len(self._buf):
            line = bytes(self._buf[self._line_start:]).rstrip(b"\r")
            if line:
                self._field(line)
        return [self._dispatch(len(self._buf))]

    def _dispatch(self, upto: int) -> SSEEvent:
        raw = bytes(self._buf[:upto])
        del self._buf[:upto]
        self._scan -= upto
        self._line_start = 0
        data = None if self._data is None else b"\n".join(self._data)
        event = SSEEvent(raw=raw, data=data, event=self._event, id=self._id)
        self._reset_fields()
        return event

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            self._id = value.decode("utf-8", "replace")


def encode_event(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event; multi-line data becomes several ``data:`` lines."""
    if isinstance(data, str):
        data = data.encode()
    head = b"event: " + event.encode() + b"\n" if event else b""
    if b"\n" not in data:
        return head + b"data: " + data + b"\n\n"
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
