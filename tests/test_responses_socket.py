"""Responses turns over one upstream socket per client session: the provider against
the simulator's WebSocket mode (and a scripted server where the simulator cannot be
made to misbehave), then through the gateway's own dispatcher."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from wsproto.events import CloseConnection, TextMessage

from actors.credentials import Credential
from gateway.request import Call
from protocols import openai_responses
from protocols.errors import UpstreamAuthError, UpstreamBadRequest, UpstreamRateLimited, UpstreamServerError
from protocols.redact import Redactor
from protocols.secret import Secret
from protocols.unified import UsageReport
from providers.http11 import Pool
from providers.openai import OpenAIResponsesProvider, websocket_url
from providers.responses_socket import SessionStatistics, SocketSession, current_session, previous_response_missing
from providers.sim_script import Fault
from providers.simulator import Simulator
from tests.conftest import DEMO_KEY, base_config, running_gateway
from tests.ws_upstream import Peer, ScriptedServer

SECRET = "sk-upstream-secret-0123456789abcdef"
CREDENTIAL = Credential("up", "up-1", Secret(SECRET))


@asynccontextmanager
async def provider_on_simulator(**kw):
    sim = Simulator()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        pool = Pool(url + "/v1", env={})
        try:
            yield sim, OpenAIResponsesProvider("up", url + "/v1", pool, websocket=True, **kw)
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()


def request(model: str = "up/gpt-client", text: str = "hi", **raw):
    req = openai_responses.parse_request({"model": model, "input": text, "stream": True})
    return attrs.evolve(req, raw={**req.raw, **raw}) if raw else req


async def read_turn(reader) -> list:
    frames = []
    while (batch := await reader.next_batch()) is not None:
        frames.extend(batch)
    return frames


def usage_of(frames):
    return [ev.usage for f in frames for ev in f.events if isinstance(ev, UsageReport)][-1]


async def test_two_turns_share_one_upstream_socket_with_the_model_rewritten_and_the_key_presented():
    async with provider_on_simulator() as (sim, provider):
        with trio.fail_after(5):
            async with SocketSession.open() as session:
                assert current_session.get() is session
                turns = []
                for text in ("first", "second"):
                    async with provider.stream(request(text=text), "sim-up", CREDENTIAL) as reader:
                        turns.append(await read_turn(reader))
                        assert reader.terminal and reader.content_type == "text/event-stream"
                assert session.statistics().opened == 1 and session.statistics().turns == 2
            assert current_session.get() is None
            await sim.wait_websocket_open(0)  # the session closed its socket on the way out
    assert sim.websocket_connections == 1
    assert [(t.model, t.key) for t in sim.ws_turns] == [("sim-up", SECRET), ("sim-up", SECRET)]
    assert [b["type"] for b in sim.bodies] == ["response.create", "response.create"]
    assert [usage_of(frames) for frames in turns] == sim.reported
    # each frame is the SSE event the HTTP stream would have carried, the message's text as sent
    first = turns[0][0].raw
    assert first.startswith(b"event: response.created\ndata: {") and first.endswith(b"}\n\n")
    assert turns[1][-1].raw.startswith(b"event: response.completed\n")


async def test_without_a_session_or_with_the_switch_off_the_stream_goes_over_http():
    async with provider_on_simulator() as (sim, provider):
        with trio.fail_after(5):
            async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                await read_turn(reader)
            provider.websocket = False
            async with SocketSession.open():
                async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                    await read_turn(reader)
    assert sim.websocket_connections == 0 and sim.requests == 2


async def test_a_turn_left_mid_stream_closes_its_socket_and_the_next_turn_opens_a_new_one():
    async with provider_on_simulator() as (sim, provider):
        with trio.fail_after(5):
            async with SocketSession.open() as session:
                async with provider.stream(request(model="up/x", text="[[sim stall_after=3]]"), "sim-up",
                                           CREDENTIAL) as reader:
                    assert await reader.next_batch()  # the answer began, then the turn is abandoned
                await sim.wait_websocket_open(0)
                await sim.wait_idle()  # the simulator saw the client go and stopped the turn
                with trio.CancelScope() as scope:  # a cancel (a deadline, the client gone) does the same
                    async with provider.stream(request(text="[[sim stall_after=3]]"), "sim-up", CREDENTIAL) as r:
                        await r.next_batch()
                        scope.cancel()
                        await r.next_batch()
                await sim.wait_websocket_open(0)
                async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                    assert (await read_turn(reader))[-1].raw.startswith(b"event: response.completed")
                assert session.statistics().opened == 3
    assert sim.websocket_connections == 3


async def test_a_socket_broken_mid_turn_ends_the_turn_unfinished_and_is_replaced():
    async with provider_on_simulator() as (sim, provider):
        with trio.fail_after(5):
            async with SocketSession.open():
                async with provider.stream(request(text="[[sim disconnect_after=4]]"), "sim-up",
                                           CREDENTIAL) as reader:
                    frames = await read_turn(reader)
                    assert frames and not reader.terminal  # the dispatcher ends the client's stream with an error
                async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                    await read_turn(reader)
                    assert reader.terminal
    assert sim.websocket_connections == 2


async def test_an_error_frame_before_any_event_is_the_classified_error_and_the_socket_stays():
    async with provider_on_simulator() as (sim, provider):
        with trio.fail_after(5):
            async with SocketSession.open() as session:
                with pytest.raises(UpstreamRateLimited) as limited:
                    async with provider.stream(request(), "sim-up+status=429+retry_after=7", CREDENTIAL):
                        pass
                with pytest.raises(UpstreamBadRequest) as missing:
                    async with provider.stream(request(previous_response_id="resp_unknown"), "sim-up", CREDENTIAL):
                        pass
                async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                    await read_turn(reader)
                assert session.statistics().opened == 1
    assert limited.value.upstream_status == 429 and limited.value.retry_after == 7.0
    assert limited.value.status == 429 and limited.value.request_sent
    assert previous_response_missing(missing.value) and not previous_response_missing(limited.value)
    assert missing.value.param == "previous_response_id"
    assert sim.websocket_connections == 1


async def test_a_refused_handshake_is_classified_as_nothing_sent():
    async with provider_on_simulator() as (sim, provider):
        sim.key_faults[SECRET] = Fault(status=401)
        with trio.fail_after(5):
            async with SocketSession.open():
                with pytest.raises(UpstreamAuthError) as refused:
                    async with provider.stream(request(), "sim-up", CREDENTIAL):
                        pass
                sim.key_faults.clear()
                async with provider.stream(request(), "sim-up", CREDENTIAL) as reader:
                    await read_turn(reader)
    assert refused.value.upstream_status == 401 and refused.value.request_sent is False
    assert sim.websocket_connections == 1


async def test_an_unreachable_upstream_is_not_sent():
    async with provider_on_simulator() as (sim, provider):
        pass
    with trio.fail_after(5):
        async with SocketSession.open():
            with pytest.raises(UpstreamServerError) as unreachable:
                async with provider.stream(request(), "sim-up", CREDENTIAL):
                    pass
    assert unreachable.value.request_sent is False


def _answer(rid: str) -> list[str]:
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": rid, "status": "in_progress"}}
    done = {"type": "response.completed", "sequence_number": 1, "response": {
        "id": rid, "status": "completed", "output": [],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}}
    return [json.dumps(created), json.dumps(done)]


async def test_a_socket_the_upstream_closed_between_turns_is_replaced_before_sending():
    closing = trio.Event()

    async def answers_then_closes(peer: Peer):
        await peer.handshake()
        await peer.receive_text()
        for text in _answer("resp_1"):
            await peer.send(TextMessage(data=text))
        await closing.wait()
        await peer.send(CloseConnection(code=1001))

    async def answers(peer: Peer):
        await peer.handshake()
        while await peer.receive_text() is not None:
            for text in _answer("resp_2"):
                await peer.send(TextMessage(data=text))

    server = ScriptedServer(answers_then_closes, answers)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        provider = OpenAIResponsesProvider("up", url.replace("ws://", "http://").removesuffix("/responses"),
                                           Pool("http://127.0.0.1", env={}), websocket=True)
        with trio.fail_after(5):
            async with SocketSession.open() as session:
                async with provider.stream(request(), "m", CREDENTIAL) as reader:
                    assert usage_of(await read_turn(reader)).input == 5
                closing.set()
                await server.wait_finished(1)
                # the close (and the end of the connection) has reached this side, unread
                await trio.lowlevel.wait_readable(session._sockets[("up", "up-1")]._sock)
                async with provider.stream(request(), "m", CREDENTIAL) as reader:
                    frames = await read_turn(reader)
                assert reader.terminal and b'"resp_2"' in frames[0].raw
        nursery.cancel_scope.cancel()
    assert server.connections == 2
    assert server.peers[0].request.extra_headers and dict(server.peers[0].request.extra_headers)[
        b"openai-beta"] == b"responses_websockets=2026-02-06"


async def test_a_socket_past_its_connection_limit_is_replaced_and_the_turn_sent_again():
    async def retired(peer: Peer):
        await peer.handshake()
        await peer.receive_text()
        await peer.send(TextMessage(data=json.dumps({"type": "error", "status": 400, "error": {
            "type": "invalid_request_error", "code": "websocket_connection_limit_reached",
            "message": "Responses websocket connection limit reached (60 minutes)."}})))
        await peer.receive_text()

    async def answers(peer: Peer):
        await peer.handshake()
        while await peer.receive_text() is not None:
            for text in _answer("resp_fresh"):
                await peer.send(TextMessage(data=text))

    server = ScriptedServer(retired, answers)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        provider = OpenAIResponsesProvider("up", url.replace("ws://", "http://").removesuffix("/responses"),
                                           Pool("http://127.0.0.1", env={}), websocket=True)
        with trio.fail_after(5):
            async with SocketSession.open() as session:
                async with provider.stream(request(), "m", CREDENTIAL) as reader:
                    frames = await read_turn(reader)
                assert reader.terminal and b'"resp_fresh"' in frames[0].raw
                assert session.statistics() == SessionStatistics(open=1, opened=2, turns=1)
            await server.wait_finished(2)
        nursery.cancel_scope.cancel()
    assert server.connections == 2


async def test_an_error_frame_that_quotes_the_key_is_redacted():
    async def quoting(peer: Peer):
        await peer.handshake()
        await peer.receive_text()
        await peer.send(TextMessage(data=json.dumps({"type": "error", "status": 401, "error": {
            "type": "invalid_request_error", "code": "invalid_api_key",
            "message": f"Incorrect API key provided: {SECRET}."}})))
        await peer.receive_text()

    server = ScriptedServer(quoting)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.serve)
        provider = OpenAIResponsesProvider("up", url.replace("ws://", "http://").removesuffix("/responses"),
                                           Pool("http://127.0.0.1", env={}), websocket=True,
                                           redactor=Redactor([SECRET]))
        with trio.fail_after(5):
            async with SocketSession.open():
                with pytest.raises(UpstreamAuthError) as refused:
                    async with provider.stream(request(), "m", CREDENTIAL):
                        pass
        nursery.cancel_scope.cancel()
    assert SECRET not in refused.value.message and SECRET.encode() not in refused.value.upstream_body
    assert "Incorrect API key provided" in refused.value.message


def test_the_socket_url_follows_the_base_url():
    assert websocket_url("https://api.openai.com/v1") == "wss://api.openai.com/v1/responses"
    assert websocket_url("http://127.0.0.1:8080/v1") == "ws://127.0.0.1:8080/v1/responses"


# ---------------------------------------------------------------- through the dispatcher


class MemoryLink:
    """The client's side of one turn, kept in memory (the WebSocket route writes frames)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.ended = False
        self.disconnect = None  # no server hook: the dispatcher waits in wait_disconnect

    async def start(self, status: int, headers: list) -> None:
        self.status = status

    async def write(self, data: bytes) -> None:
        self.body += data

    async def end(self, data: bytes = b"") -> None:
        self.body += data
        self.ended = True

    async def wait_disconnect(self) -> None:
        await trio.sleep_forever()


async def test_dispatched_turns_of_one_session_share_one_socket_and_settle_each_with_the_upstreams_usage(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["sim"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses",
                               "websocket": True}
    doc["models"] = {"codex": {"targets": ["sim/sim-responses"]}}
    doc["pricing"] = {"sim/sim-responses": {"input": "1.00", "output": "2.00"}}
    async with running_gateway(doc) as gw:
        dispatcher = gw.runtime.dispatcher
        links = []
        with trio.fail_after(10):
            async with SocketSession.open():
                for text in ("first", "second"):
                    body = json.dumps({"model": "codex", "input": text, "stream": True}).encode()
                    req = openai_responses.parse_request(json.loads(body))
                    link = MemoryLink()
                    await dispatcher.serve(Call(req, DEMO_KEY, openai_responses, len(body), dispatcher.next_id()), link)
                    links.append(link)
            await gw.simulator.wait_websocket_open(0)
        entries = gw.ledger_entries()
        sim = gw.simulator
    assert sim.websocket_connections == 1
    assert [(t.model, t.key) for t in sim.ws_turns] == [("sim-responses", "sim-key")] * 2
    assert [link.status for link in links] == [200, 200]
    assert all(link.body.rstrip().splitlines()[-1].startswith(b'data: {"type":"response.completed"')
               for link in links)
    assert [(e["reason"], e["provenance"]) for e in entries] == [("end", "reported")] * 2
    assert [(e["input"], e["output"]) for e in entries] == [(u.input, u.output) for u in sim.reported]
