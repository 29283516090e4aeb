"""The Responses WebSocket mode, driven by the official openai SDK's own WebSocket client
(``client.responses.connect()``, run in a worker thread) against a gateway on a real socket."""

from __future__ import annotations

import json
import os
from functools import partial

import httpx
import openai
import pytest
import trio
import websockets

from providers.websocket import connect
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

TERMINAL = {"response.completed", "response.incomplete", "response.failed", "error"}


@pytest.fixture
def socket_doc(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
    doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
    doc["models"]["chat-slow"] = {"targets": ["sim/sim-chat+stall_after=3"]}
    doc["pricing"]["simr/*"] = {"input": "1.25", "output": "10.00"}
    doc["keys"].append({"name": "poor", "key": "th-poor-key", "credit_usd": "0.000001"})
    return doc


def _client(url: str, key: str = DEMO_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _turn(conn, **body) -> list:
    """Send one ``response.create`` and read its events up to the turn's last one."""
    conn.response.create(**body)
    events = []
    for event in conn:
        events.append(event)
        if event.type in TERMINAL:
            return events
    return events


async def _in_thread(fn, *args):
    return await trio.to_thread.run_sync(partial(fn, *args), abandon_on_cancel=True)


async def _handshake(url: str, headers: dict, until: bytes) -> bytes:
    """A WebSocket handshake on a raw socket: what the gateway answered, up to ``until``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(
            b"GET /v1/responses HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + b"\r\n")
        reply = b""
        while until not in reply:
            chunk = await stream.receive_some()
            if not chunk:
                break
            reply += chunk
    return reply


def _final(events: list):
    assert events[-1].type == "response.completed", [e.type for e in events]
    return events[-1].response


@pytest.mark.parametrize("model", ["gpt-sim", "demo"])  # a Responses upstream, and a Chat one (translated)
async def test_two_turns_chained_with_store_false_on_one_connection(socket_doc, model):
    def session(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            first = _final(_turn(conn, model=model, input="first question", store=False))
            second = _final(_turn(conn, model=model, input="second question", store=False,
                                  previous_response_id=first.id))
            return first, second

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            first, second = await _in_thread(session, gw.url)
            assert first.output_text and second.output_text and first.id != second.id
            # the second upstream call carried the whole conversation, and no previous_response_id
            body = gw.simulator.bodies[-1]
            assert "previous_response_id" not in body
            text = str(body.get("input") or body.get("messages"))
            assert "first question" in text and first.output_text[:30] in text and "second question" in text
            entries = gw.ledger_entries()
            assert len(entries) == 2 and all(e["reason"] == "end" for e in entries)
            assert [e["provenance"] for e in entries] == ["reported", "reported"]


async def test_prewarm_is_free_and_the_next_turn_chains_to_it(socket_doc):
    def session(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            warm = _turn(conn, model="gpt-sim", input=[{"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "You are terse."}]}], generate=False)  # store left to default
            turn = _final(_turn(conn, model="gpt-sim", input="hello", store=False,
                                previous_response_id=warm[-1].response.id))
            with pytest.raises(openai.NotFoundError):  # free: kept on the connection, never in the store
                _client(url).responses.retrieve(warm[-1].response.id)
            return warm, turn

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            warm, turn = await _in_thread(session, gw.url)
            assert [e.type for e in warm] == ["response.created", "response.completed"]
            assert warm[-1].response.output == [] and warm[-1].response.usage.total_tokens == 0
            assert gw.simulator.requests == 1  # only the real turn reached an upstream
            assert "You are terse." in str(gw.simulator.bodies[-1]["input"])
            [entry] = gw.ledger_entries()  # the prewarm has no ledger entry: it cost nothing
            assert entry["reason"] == "end"


async def test_a_turn_refused_for_credit_then_served_after_a_top_up(socket_doc):
    def session(url, top_up):
        with _client(url, "th-poor-key").responses.connect(max_retries=0) as conn:
            refused = _turn(conn, model="gpt-sim", input="hi", store=False)
            trio.from_thread.run(top_up)
            served = _turn(conn, model="gpt-sim", input="hi", store=False)  # the same connection
            return refused, served

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            async def top_up():
                assert gw.ledger_entries() == [] and gw.simulator.requests == 0
                async with httpx.AsyncClient(base_url=gw.url) as admin:
                    r = await admin.patch("/admin/keys/poor", json={"credit_usd": "10.00"},
                                          headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
                    assert r.status_code == 200, r.text

            refused, served = await _in_thread(session, gw.url, top_up)
            [error] = refused
            assert error.type == "error" and error.status == 402
            assert _final(served).output_text
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "end" and entry["key_name"] == "poor"


async def test_a_client_closing_mid_turn_is_settled_once_as_client_cancel(socket_doc):
    def session(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            conn.response.create(model="chat-slow", input="hi", store=False)
            for event in conn:
                if event.type == "response.output_text.delta":
                    return  # leaves the block: the SDK closes the socket mid-turn

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            await _in_thread(session, gw.url)
            await gw.simulator.wait_idle()  # the upstream stream was closed
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "client_cancel"


@pytest.mark.parametrize("headers, status", [
    ({"authorization": "Bearer th-wrong-key"}, 401),
    ({}, 401),
    ({"authorization": f"Bearer {DEMO_KEY}", "origin": "https://evil.example"}, 403),
    ({"authorization": f"Bearer {DEMO_KEY}"}, 426),  # the mode switched off
])
async def test_a_handshake_is_refused_before_the_101(socket_doc, headers, status):
    if status == 426:
        socket_doc["websocket"] = {"enabled": False}
    with trio.fail_after(10):
        async with running_gateway(socket_doc) as gw:
            reply = await _handshake(gw.url, headers, until=b"}}")
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), head
            assert b"error" in body and b"th-wrong-key" not in reply


async def test_an_unknown_previous_response_is_a_404_error_frame_and_the_socket_stays_usable(socket_doc):
    def session(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            missing = _turn(conn, model="gpt-sim", input="hi", store=False, previous_response_id="resp_nope")
            served = _turn(conn, model="gpt-sim", input="hi", store=False)
            return missing, served

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            missing, served = await _in_thread(session, gw.url)
            [error] = missing
            assert error.status == 404 and error.error.code == "previous_response_not_found"
            assert _final(served).output_text


async def test_admin_lists_open_sockets_with_their_turns_and_costs(socket_doc):
    def session(url, look):
        with _client(url).responses.connect(max_retries=0) as conn:
            _final(_turn(conn, model="gpt-sim", input="hi", store=False))
            _turn(conn, model="gpt-sim", input="warm", store=False, generate=False)
            return trio.from_thread.run(look)

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            async def look():
                async with httpx.AsyncClient(base_url=gw.url) as admin:
                    r = await admin.get("/admin/sockets", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
                    assert r.status_code == 200, r.text
                    return r.json()

            seen = await _in_thread(session, gw.url, look)
            [sock] = seen["open"]
            assert sock["key"] == "test" and sock["turns_total"] == 2 and DEMO_KEY not in str(seen)
            turn, warm = sock["turns"]
            assert turn["end"] == "answered" and float(turn["cost_usd"]) > 0 and turn["response_id"]
            assert warm["end"] == "prewarm" and warm["cost_usd"] is None and warm["request_id"] is None
        assert gw.runtime.sockets.open == {} and gw.runtime.sockets.opened_total == 1


async def test_an_idle_connection_is_closed_and_an_old_one_told_its_limit(socket_doc):
    socket_doc["websocket"] = {"idle_timeout_s": 0.2}

    def idle(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            with pytest.raises(websockets.exceptions.ConnectionClosedOK) as info:
                conn.recv()
            return info.value

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            closed = await _in_thread(idle, gw.url)
            assert closed.rcvd.code == 1000 and closed.rcvd.reason == "idle timeout"

    socket_doc["websocket"] = {"max_lifetime_s": 0.3}

    def aged(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            served = _final(_turn(conn, model="gpt-sim", input="hi", store=False))
            return served, conn.recv()

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            served, told = await _in_thread(aged, gw.url)
            assert served.output_text
            assert told.type == "error" and told.error.code == "websocket_connection_limit_reached"


async def test_a_stop_closes_an_idle_connection_as_going_away(socket_doc):
    def session(url, stop):
        with _client(url).responses.connect(max_retries=0) as conn:
            _final(_turn(conn, model="gpt-sim", input="hi", store=False))
            trio.from_thread.run_sync(stop)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                conn.recv()
            return info.value

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            closed = await _in_thread(session, gw.url, gw.gateway.traffic.begin_stop)
            assert closed.rcvd.code == 1001


async def test_a_listed_browser_origin_may_open_a_socket(socket_doc):
    socket_doc["websocket"] = {"allowed_origins": ["https://app.example"]}

    def session(url):
        with _client(url).responses.connect(max_retries=0, extra_headers={"Origin": "https://app.example"}) as conn:
            return _final(_turn(conn, model="gpt-sim", input="hi", store=False))

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            assert (await _in_thread(session, gw.url)).output_text


async def test_a_websocket_upstream_is_reached_over_one_socket_per_client_connection(socket_doc):
    socket_doc["providers"]["simr"].update(
        websocket=True, credentials=[{"id": "ws-1", "key": "sk-upstream-socket-key-1"}])

    def session(url):
        with _client(url).responses.connect(max_retries=0) as conn:
            first = _final(_turn(conn, model="gpt-sim", input="one", store=False))
            second = _final(_turn(conn, model="gpt-sim", input="two", store=False, previous_response_id=first.id))
            return first, second

    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            first, second = await _in_thread(session, gw.url)
            sim = gw.simulator
            assert sim.websocket_connections == 1  # two turns, one upstream socket
            assert [(t.model, t.key) for t in sim.ws_turns] == [("sim-gpt", "sk-upstream-socket-key-1")] * 2
            assert "one" in str(sim.bodies[-1]["input"]) and first.output_text[:30] in str(sim.bodies[-1]["input"])
            entries = gw.ledger_entries()
            # one settlement per turn, with the usage each turn's response.completed carried
            assert [(e["input"], e["output"], e["provenance"]) for e in entries] == [
                (u.input, u.output, "reported") for u in sim.reported]
            assert second.usage.input_tokens > first.usage.input_tokens
        assert gw.simulator.websocket_open == 0  # closed with the client's connection


async def test_deflate_is_negotiated_when_offered(socket_doc):
    with trio.fail_after(10):
        async with running_gateway(socket_doc) as gw:
            reply = await _handshake(gw.url, {
                "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
                "Authorization": f"Bearer {DEMO_KEY}"}, until=b"\r\n\r\n")
            head = reply.partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 101 ") and b"sec-websocket-extensions: permessage-deflate" in head


async def test_a_message_over_the_limit_closes_the_socket_with_1009(socket_doc):
    socket_doc["websocket"] = {"max_message_bytes": 64 * 1024}
    with trio.fail_after(20):
        async with running_gateway(socket_doc) as gw:
            url = gw.url.replace("http://", "ws://") + "/v1/responses"
            async with connect(url, {"authorization": f"Bearer {DEMO_KEY}"}) as ws:
                text = os.urandom(96 * 1024).hex()  # does not deflate below the limit
                await ws.send_text(json.dumps({"type": "response.create", "model": "gpt-sim", "input": text}))
                assert await ws.receive_text() is None
                assert ws.close_code == 1009
            assert gw.simulator.requests == 0 and gw.ledger_entries() == []
