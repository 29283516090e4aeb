"""Incremental splitter for a JSON array streamed element by element.

Gemini's ``streamGenerateContent`` without ``alt=sse`` answers with one JSON array
written a piece at a time (``[{...}\\r\\n,\\r\\n{...}]``). A gateway must act on each
element as it arrives (usage, errors, the finish), so the array cannot be parsed as a
whole. This splitter is sans-IO like ``sse.SSEDecoder``: bytes in, elements out, each
with ``raw`` -- every byte since the previous element, the ``[`` or ``,`` separators
included -- so that the concatenation of all ``raw`` reproduces the body exactly and a
pass-through can forward it unchanged.

Elements end where their brackets balance, outside strings (escapes honoured even
when a backslash ends one chunk and the escaped byte starts the next). Scanning jumps
between interesting bytes with compiled patterns and resumes where it stopped, so each
byte is looked at once: linear time however the body is chunked. A bare object instead
of an array (an error body with status 200) comes out as one element.
"""

from __future__ import annotations

import re

import attrs

_STRUCTURE = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")

_BEFORE, _BETWEEN, _ELEMENT, _AFTER, _BROKEN = range(5)


class _Malformed(Exception):
    pass


@attrs.frozen
class ArrayElement:
    """A slice of the body: ``data`` is one element's JSON text (None for separators
    or the closing bracket alone); ``raw`` is every byte the slice spanned; ``error``
    says why the body stopped being a well-formed array (reported once)."""

    raw: bytes
    data: bytes | None = None
    error: str | None = None


class JsonArraySplitter:
    __slots__ = ("_buf", "_pos", "_state", "_depth", "_in_string", "_elem_start", "_bare")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # next byte not yet scanned
        self._state = _BEFORE
        self._depth = 0
        self._in_string = False
        self._elem_start = 0
        self._bare = False

    @property
    def complete(self) -> bool:
        """The body's JSON value has closed (the array's ``]``, or a bare object's last
        brace): whatever follows is trailing bytes."""
        return self._state == _AFTER

    def feed(self, chunk: bytes) -> list[ArrayElement]:
        """Add bytes; return the slices they completed. Once the body proves malformed,
        one slice says so and every later byte comes back as a raw slice with no data."""
        if self._state == _BROKEN:
            return [ArrayElement(bytes(chunk))] if chunk else []
        self._buf += chunk
        out: list[ArrayElement] = []
        try:
            while self._step(out):
                pass
        except _Malformed as exc:
            self._state = _BROKEN
            out.append(self._take(len(self._buf), None, str(exc)))
        return out

    def close(self) -> list[ArrayElement]:
        """End of input: whatever was not yet returned, as a last raw slice."""
        error = "the stream ended inside an array element" if self._state == _ELEMENT else None
        self._state = _BROKEN
        rest = self._take(len(self._buf), None, error)
        return [rest] if rest.raw or error else []

    # ------------------------------------------------------------ the machine

    def _step(self, out: list) -> bool:
        """Advance as far as the buffer allows; True if another step may progress."""
        buf = self._buf
        state = self._state
        if state == _ELEMENT:
            return self._scan_element(out)
        m = _NOT_SPACE.search(buf, self._pos)
        if m is None:
            self._pos = len(buf)
            return False
        ch = buf[m.start()]
        self._pos = m.start() + 1
        if state == _BEFORE:
            if ch == 0x5B:  # [
                self._state = _BETWEEN
                return True
            if ch == 0x7B:  # {  a bare object
                self._begin(m.start(), bare=True)
                return True
            raise _Malformed(f"expected '[' at the start of the stream, got {chr(ch)!r}")
        if state == _BETWEEN:
            if ch == 0x2C:  # ,
                return True
            if ch == 0x5D:  # ]
                self._state = _AFTER
                out.append(self._take(self._pos, None))
                return True
            if ch in (0x7B, 0x5B):
                self._begin(m.start(), bare=False)
                return True
            raise _Malformed(f"unexpected {chr(ch)!r} between array elements")
        # _AFTER: trailing bytes (a newline) are passed on as they come
        out.append(self._take(len(buf), None))
        return False

    def _begin(self, start: int, bare: bool) -> None:
        self._state = _ELEMENT
        self._elem_start = start
        self._depth = 1
        self._in_string = False
        self._bare = bare

    def _scan_element(self, out: list) -> bool:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        while pos < n:
            if self._in_string:
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = n
                    break
                if buf[m.start()] == 0x5C:  # backslash: skip the escaped byte, maybe in the next chunk
                    pos = m.start() + 2
                    continue
                self._in_string = False
                pos = m.start() + 1
                continue
            m = _STRUCTURE.search(buf, pos)
            if m is None:
                pos = n
                break
            ch = buf[m.start()]
            pos = m.start() + 1
            if ch == 0x22:  # "
                self._in_string = True
            elif ch in (0x7B, 0x5B):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    data = bytes(buf[self._elem_start:pos])
                    self._state = _AFTER if self._bare else _BETWEEN
                    out.append(self._take(pos, data))
                    return True
        self._pos = pos
        return False

    def _take(self, upto: int, data: bytes | None, error: str | None = None) -> ArrayElement:
        raw = bytes(self._buf[:upto])
        del self._buf[:upto]
        self._pos = 0
        return ArrayElement(raw, data, error)
