"""Helpers shared by the stream tests: cutting bytes at arbitrary points, framing them."""

from __future__ import annotations


def split_at(data: bytes, cuts) -> list[bytes]:
    """``data`` cut at every point in ``cuts`` (taken modulo its length + 1)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


def frames_in_pieces(framer, data: bytes, step: int) -> list:
    """Every frame ``framer`` yields for ``data`` fed in ``step``-byte pieces."""
    frames = []
    for piece in split_at(data, range(0, len(data), step)):
        frames.extend(framer.feed(piece))
    frames.extend(framer.close())
    return frames
