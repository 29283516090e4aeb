"""The SSE decoder: any chunk boundary, CRLF, comments, multi-line data, big events."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.sse import SSEDecoder, encode_event
from tests.streams import split_at

SAMPLE = (
    b": comment\r\n\r\n"
    b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\ndata:no-space\n\n"
    b"data: [DONE]\n\n"
)


def decode_all(chunks) -> list:
    decoder = SSEDecoder()
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def test_fields_and_framing():
    events = decode_all([SAMPLE])
    assert [e.data for e in events] == [None, b'{"a":1}', b"line one\nline two", b"no-space", b"[DONE]"]
    assert events[1].event == "message_start"
    assert events[3].id == "7"
    assert b"".join(e.raw for e in events) == SAMPLE


def test_last_event_without_blank_line_is_flushed_on_close():
    events = decode_all([b"data: 1\n\ndata: 2\n"])
    assert [e.data for e in events] == [b"1", b"2"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_split_gives_the_same_events(cuts):
    assert decode_all(split_at(SAMPLE, cuts)) == decode_all([SAMPLE])


def test_multi_megabyte_event_in_small_chunks_is_linear():
    payload = b"x" * (8 * 1024 * 1024)
    data = b"data: " + payload + b"\n\n"
    started = time.process_time()
    events = decode_all(data[i:i + 4096] for i in range(0, len(data), 4096))
    elapsed = time.process_time() - started
    assert events[0].data == payload
    # quadratic re-scanning of 2048 chunks of an 8 MB buffer would take minutes
    assert elapsed < 5.0


def test_encoder_round_trips_multi_line_data():
    raw = encode_event("a\nb", event="x")
    [event] = decode_all([raw])
    assert (event.event, event.data) == ("x", b"a\nb")
