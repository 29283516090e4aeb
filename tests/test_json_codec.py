"""``protocols.json_codec`` writes what the standard library wrote: the same bytes for
what real clients send, and, for what orjson refuses, the standard library's own text
or error."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from protocols import json_codec
from protocols.errors import InvalidRequest
from providers.base import encode_body

REQUESTS = sorted((Path(__file__).parent / "fixtures" / "requests").glob("*.json"))


def _nested(depth: int) -> list:
    doc: list = []
    for _ in range(depth):
        doc = [doc]
    return doc


def _compact(doc) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("path", REQUESTS, ids=[p.name[:60] for p in REQUESTS])
def test_a_captured_client_body_is_written_as_the_standard_library_writes_it(path):
    body = json.loads(path.read_text()).get("body")
    if not isinstance(body, dict):
        pytest.skip("no JSON body in this capture")
    assert json_codec.dumps(body) == _compact(body)
    assert json_codec.dumps_bytes(body) == _compact(body).encode()
    assert encode_body(body) == _compact(body).encode()


@pytest.mark.parametrize("doc", [
    {"seed": 2 ** 70},  # past 64 bits
    {1: "a key that is not a string"},
    _nested(300),  # past orjson's 255 levels
], ids=["big-int", "int-key", "deep"])
def test_what_orjson_refuses_to_write_is_written_as_the_standard_library_writes_it(doc):
    assert json_codec.dumps(doc) == _compact(doc)


def test_text_no_utf8_can_hold_is_the_clients_error_before_anything_is_sent():
    assert json_codec.dumps({"s": "\ud800"}) == _compact({"s": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        json_codec.dumps_bytes({"s": "\ud800"})
    with pytest.raises(InvalidRequest, match="not valid Unicode"):
        encode_body({"messages": [{"role": "user", "content": "\ud800"}]})


def test_nesting_past_the_interpreters_limit_is_the_clients_error():
    doc = _nested(100_000)
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        encode_body({"messages": doc})


@pytest.mark.parametrize("path", [min(REQUESTS, key=lambda p: p.stat().st_size),
                                  max(REQUESTS, key=lambda p: p.stat().st_size)], ids=lambda p: p.name[:60])
def test_an_upstream_body_holds_no_more_memory_than_its_length(path):
    """The body lives as long as its call (a stream's whole length): the block holding
    it is its own size, not orjson's buffer (4 KB for a small body, 130 KB for a 50 KB
    Claude Code one), which every open stream would otherwise carry."""
    doc = json.loads(path.read_text())
    encode_body(doc)  # orjson's own one-time setup is not the body's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        body = encode_body(doc)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert body == _compact(doc).encode()
    assert held < len(body) + 256, (held, len(body))
