"""Upstreams that do not stop, and clients that do not read: bounded, and ended honestly.

Through real sockets, against a recorded upstream (``tests/replay.py``): an upstream that
sent its closing event and keeps the connection open is done at once; one that keeps
sending after its finish, or sends an endless whole answer or an endless event, is cut
at its bound with the client's protocol error and one settlement; a client that stops
reading is timed out on its own clock, as a client cancel, not an upstream stall.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import DEMO_KEY, base_config, running_gateway
from tests.gateway_process import serve_process, write_config
from tests.replay import Replay
from tests.test_billing_edges import FAMILY, _assert_error_ending, _client_request

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = {"openai-chat": "stream-text-include-usage.sse", "openai-responses": "stream-text-2025-03.sse",
            "anthropic": "stream-text-ping-padding.sse", "gemini": "stream-sse-thoughts-token-count.sse"}


def _config(tmp_path: Path, url: str, family_dir: str, **streaming) -> dict:
    family, suffix, _ = FAMILY[family_dir]
    doc = base_config(tmp_path)
    doc["providers"]["rec"] = {"family": family, "base_url": url + suffix, "max_response_bytes": 256 * 1024,
                               "credentials": [{"id": "r1", "key": "sk-recorded"}]}
    doc["models"]["m"] = {"targets": ["rec/recorded"]}
    doc["pricing"]["rec/*"] = {"input": "1", "output": "2"}
    doc["streaming"] = {"ttfb_timeout_s": 30, "stall_timeout_s": 30, "max_held_bytes": 64 * 1024, **streaming}
    return doc


async def _through(tmp_path: Path, replay: Replay, family_dir: str, client: str, **streaming):
    """One call of ``client``'s protocol through the gateway to ``replay``."""
    async with trio.open_nursery() as nursery:
        await nursery.start(replay.serve)
        async with running_gateway(_config(tmp_path, replay.url, family_dir, **streaming)) as gw:
            url, body, headers = _client_request(client, FIXTURES / family_dir / RECORDED[family_dir])
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                r = await http.post(url, json=body, headers=headers)
            await gw.usage_actor.wait_settles(1)
            entries = gw.ledger_entries()
        nursery.cancel_scope.cancel()
    return r, entries


@pytest.mark.parametrize("family_dir", sorted(RECORDED))
async def test_a_closing_event_ends_the_answer_at_once_though_the_connection_stays_open(tmp_path, family_dir):
    body = (FIXTURES / family_dir / RECORDED[family_dir]).read_bytes()
    replay = Replay(body, pause_at=len(body))  # every byte, then the connection held open
    client = FAMILY[family_dir][2]
    with trio.fail_after(10):  # far below the 30 s stall timeout
        r, entries = await _through(tmp_path, replay, family_dir, client)
    assert r.status_code == 200
    [entry] = entries
    assert (entry["reason"], entry["provenance"]) == ("end", "reported")


async def test_bytes_after_the_finish_are_bounded(tmp_path):
    body = (FIXTURES / "openai-chat" / RECORDED["openai-chat"]).read_bytes().replace(b"data: [DONE]\n\n", b"")
    replay = Replay(body, tail=b": keep-alive\n\n" * 512)  # comment frames, forever
    with trio.fail_after(20):
        r, entries = await _through(tmp_path, replay, "openai-chat", "chat")
    assert r.status_code == 200
    _assert_error_ending("chat", r.content, json_array=False)
    assert len(r.content) < 64 * 1024 + 8192, "no more than the bound was held and sent on"
    [entry] = entries
    assert entry["reason"] == "upstream_error" and entry["provenance"] == "reported"  # its usage was final
    assert replay.closed.is_set() and replay.sent < 10 * 1024 * 1024


async def test_a_translated_client_gets_its_ending_soon_after_the_finish_whatever_follows(tmp_path):
    body = (FIXTURES / "openai-chat" / RECORDED["openai-chat"]).read_bytes().replace(b"data: [DONE]\n\n", b"")
    replay = Replay(body, tail=b": keep-alive\n\n" * 512)
    with trio.fail_after(20):
        r, entries = await _through(tmp_path, replay, "openai-chat", "anthropic")
    assert r.status_code == 200 and r.content.rstrip().endswith(b'{"type":"message_stop"}')
    [entry] = entries
    assert (entry["reason"], entry["provenance"]) == ("end", "reported")


async def test_an_endless_event_is_cut_at_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr("protocols.sse.MAX_EVENT_BYTES", 1024 * 1024)
    import protocols.sse
    monkeypatch.setattr(protocols.sse.SSEDecoder.__init__, "__defaults__", (1024 * 1024,))
    start = (FIXTURES / "openai-chat" / RECORDED["openai-chat"]).read_bytes().split(b"\n\n")[0] + b"\n\n"
    replay = Replay(start + b"data: ", tail=b"x" * 65536)  # one event that never ends
    with trio.fail_after(20):
        r, entries = await _through(tmp_path, replay, "openai-chat", "chat")
    assert r.status_code == 200
    _assert_error_ending("chat", r.content, json_array=False)
    [entry] = entries
    assert entry["reason"] == "upstream_error"
    assert replay.sent < 8 * 1024 * 1024


async def test_an_endless_whole_answer_is_cut_at_its_bound_and_estimated(tmp_path):
    replay = Replay(b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "',
                    content_type="application/json", tail=b"lorem ipsum " * 4096)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            async with running_gateway(_config(tmp_path, replay.url, "openai-chat")) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                    r = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
                [entry] = gw.ledger_entries()  # no overrun: an unreadable body is worth at most the hold
            nursery.cancel_scope.cancel()
    assert r.status_code == 502 and "bound" in r.json()["error"]["message"]
    assert entry["reason"] == "upstream_error" and entry["cost_source"] == "pricing" and entry["output"] > 0
    assert replay.sent < 4 * 1024 * 1024


@pytest.fixture
def clock():
    """Virtual time that moves only while every task has waited 300 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.3)


@pytest.mark.parametrize("pause_s,reason", [(3, "end"), (60, "client_cancel")])
async def test_a_client_that_pauses_reading_runs_its_own_clock(tmp_path, clock, pause_s, reason):
    """The upstream's stall clock (0.5 s here) stops while the gateway waits on a client
    that does not read: a pause of 3 s is a normal end; one past the client's own write
    timeout (10 s) ends the request as a client cancel -- never as an upstream stall."""
    events = (FIXTURES / "openai-chat" / RECORDED["openai-chat"]).read_bytes().split(b"\n\n")
    body = events[0] + b"\n\n" + (events[1] + b"\n\n") * 60_000 + b"\n\n".join(events[2:])
    replay = Replay(body)  # ~9 MB: more than the sockets between can buffer
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            doc = _config(tmp_path, replay.url, "openai-chat", stall_timeout_s=0.5, client_write_timeout_s=10)
            doc["streaming"]["max_held_bytes"] = 1024 * 1024
            async with running_gateway(doc) as gw:
                host, port = gw.url.removeprefix("http://").split(":")
                stream = await trio.open_tcp_stream(host, int(port))
                request = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
                await stream.send_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"authorization: Bearer " + DEMO_KEY.encode() + b"\r\nconnection: close\r\ncontent-length: "
                    + str(len(request)).encode() + b"\r\n\r\n" + request)
                assert b" 200 " in await stream.receive_some(4096)
                await trio.sleep(pause_s)  # virtual: the client reads nothing meanwhile
                while await stream.receive_some(1 << 20):
                    pass  # then reads all there is
                await stream.aclose()
                await gw.usage_actor.wait_settles(1)
                [entry] = gw.ledger_entries()
            nursery.cancel_scope.cancel()
    assert entry["reason"] == reason, (entry["reason"], entry["provenance"], entry["basis"])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _content_chunk(template: bytes, size: int) -> bytes:
    """One Chat chunk from the recording, its text replaced by ``size`` bytes of content."""
    doc = json.loads(template.removeprefix(b"data: "))
    doc["choices"][0]["delta"] = {"content": "lorem ipsum " * (size // 12)}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


@pytest.mark.parametrize("client", ["chat", "anthropic"])
async def test_a_gateway_process_stays_small_while_an_upstream_streams_without_end(tmp_path, client):
    """A `tollhouse serve` process relays an endless stream (pass-through and translated)
    of 1 GiB, twenty times its memory budget, without growing by the budget: it keeps
    nothing of what it forwarded but the bounded part a partial charge needs. The
    content comes in 64 KiB events, so the gigabyte takes seconds, not minutes."""
    events = (FIXTURES / "openai-chat" / RECORDED["openai-chat"]).read_bytes().split(b"\n\n")
    chunk = _content_chunk(events[1], 64 * 1024)
    replay = Replay(events[0] + b"\n\n" + chunk, tail=chunk * 16)  # content, endlessly, 1 MiB a write
    doc = _config(tmp_path, "", "openai-chat")
    budget_mb, upstream_mb = 50, 1024
    with trio.fail_after(150):  # a gigabyte through a loaded two-core host
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            doc["providers"]["rec"]["base_url"] = replay.url + "/v1"
            async with serve_process(write_config(tmp_path, doc)) as gateway:
                url = await gateway.url()
                path, body, headers = _client_request(client, FIXTURES / "openai-chat" / RECORDED["openai-chat"])
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    async with http.stream("POST", path, json=body, headers=headers) as r:
                        assert r.status_code == 200
                        start = _rss_mb(gateway.pid)
                        peak = start
                        sampled = relayed = 0
                        async for data in r.aiter_raw(1 << 20):
                            relayed += len(data)
                            if replay.sent > upstream_mb * 1024 * 1024:
                                break
                            if replay.sent - sampled > 16 * 1024 * 1024:  # every 16 MB the upstream sends
                                sampled = replay.sent
                                peak = max(peak, _rss_mb(gateway.pid))
                        peak = max(peak, _rss_mb(gateway.pid))
                gateway.send_signal(2)
                assert await gateway.wait() == 0
            nursery.cancel_scope.cancel()
    assert replay.sent > upstream_mb * 1024 * 1024 and relayed > (upstream_mb - 64) * 1024 * 1024
    assert peak - start < budget_mb, (start, peak)
