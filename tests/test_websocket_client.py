"""The upstream WebSocket client against real servers: the simulator (hypercorn) and a
scripted wsproto server for the frames hypercorn never sends."""

from __future__ import annotations

import json
import socket
import struct
from contextlib import asynccontextmanager

import pytest
import trio
from wsproto.events import CloseConnection, Ping, TextMessage

from providers.http11 import RequestBroken, RequestNotSent, WriteWatch
from providers.sim_script import Fault
from providers.simulator import Simulator
from providers.websocket import HandshakeRefused, MessageTooLarge, ProtocolViolation, connect
from tests.ws_upstream import Peer, ScriptedServer

KEY = {"authorization": "Bearer sk-test-upstream"}


@asynccontextmanager
async def simulator():
    sim = Simulator()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        try:
            yield sim, url.replace("http://", "ws://") + "/v1/responses"
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def scripted(*scripts):
    server = ScriptedServer(*scripts)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def create(**body) -> str:
    return json.dumps({"type": "response.create", "model": "sim-responses", "input": "hi", **body})


async def test_a_refused_handshake_carries_the_status_headers_and_body():
    async with simulator() as (sim, url):
        sim.key_faults["sk-test-upstream"] = Fault(status=429, retry_after="17")
        with trio.fail_after(5):
            with pytest.raises(HandshakeRefused) as refused:
                async with connect(url, KEY):
                    pass
        assert refused.value.status == 429
        assert refused.value.headers["retry-after"] == "17"
        assert json.loads(refused.value.body)["error"]["message"] == "Rate limit reached for requests"
        assert refused.value.request_sent is False  # a RequestNotSent: no message left
        sim.key_faults["sk-test-upstream"] = Fault(status=401)
        with trio.fail_after(5):
            with pytest.raises(HandshakeRefused) as refused:
                async with connect(url, KEY):
                    pass
        assert refused.value.status == 401
        assert sim.websocket_connections == 0


async def test_deflate_is_negotiated_when_offered_and_messages_round_trip():
    async with simulator() as (sim, url):
        with trio.fail_after(5):
            async with connect(url, KEY) as ws:
                assert ws.deflate
                await ws.send_text(create())
                types = []
                while not types or types[-1] != "response.completed":
                    types.append(json.loads(await ws.receive_text())["type"])
            async with connect(url, KEY, extensions_deflate=False) as plain:
                assert not plain.deflate
                await plain.send_text(create())
                assert json.loads(await plain.receive_text())["type"] == "response.created"
        assert types[0] == "response.created"
        assert "response.output_text.delta" in types


async def test_a_message_in_fragments_with_a_ping_between_is_one_message_and_the_ping_is_answered():
    async def script(peer: Peer):
        await peer.handshake()
        assert await peer.receive_text() == "go"
        await peer.send(TextMessage(data='{"type":"response.', message_finished=False))
        await peer.send(Ping(payload=b"are you there"))
        await peer.send(TextMessage(data="output_text.delta", message_finished=False))
        await peer.send(TextMessage(data='","delta":"é"}', message_finished=True))
        assert await peer.wait_pong() == b"are you there"
        await peer.send(TextMessage(data="after the pong"))
        await peer.receive_text()

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                await ws.send_text("go")
                assert await ws.receive_text() == '{"type":"response.output_text.delta","delta":"é"}'
                assert await ws.receive_text() == "after the pong"


async def test_a_large_message_arrives_whole_over_many_reads():
    big = json.dumps({"type": "response.output_item.done", "blob": "x" * 300_000})

    async def script(peer: Peer):
        await peer.handshake()
        await peer.send(TextMessage(data=big))
        await peer.receive_text()

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                assert await ws.receive_text() == big


async def test_a_message_over_the_bound_closes_with_1009_and_raises():
    async def script(peer: Peer):
        await peer.handshake()
        await peer.send(TextMessage(data="y" * 40_000, message_finished=False))
        await peer.send(TextMessage(data="y" * 40_000, message_finished=True))
        while not isinstance(await peer.next_event(), CloseConnection):
            pass

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY, max_message_bytes=64 * 1024) as ws:
                with pytest.raises(MessageTooLarge):
                    await ws.receive_text()
                assert ws.closed
            await server.wait_finished(1)
    assert server.peers[0].close_code == 1009


async def test_a_binary_message_is_refused_with_1003():
    from wsproto.events import BytesMessage

    async def script(peer: Peer):
        await peer.handshake()
        await peer.send(BytesMessage(data=b"\x00\x01"))
        while not isinstance(await peer.next_event(), CloseConnection):
            pass

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                with pytest.raises(ProtocolViolation):
                    await ws.receive_text()
            await server.wait_finished(1)
    assert server.peers[0].close_code == 1003


async def test_a_server_close_ends_reading_with_none():
    async def script(peer: Peer):
        await peer.handshake()
        await peer.send(TextMessage(data="last words"))
        await peer.send(CloseConnection(code=1001, reason="going away"))
        await peer.next_event()  # the client's answer to the close

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                assert await ws.receive_text() == "last words"
                assert await ws.receive_text() is None
                assert ws.closed and ws.close_code == 1001
                with pytest.raises(RequestNotSent):
                    await ws.send_text("too late")
            await server.wait_finished(1)
    assert server.peers[0].close_code == 1001  # the client answered with the server's code


async def test_a_connection_that_ends_without_a_close_frame_ends_reading_with_none():
    async def script(peer: Peer):
        await peer.handshake()
        await peer.receive_text()

    async with scripted(script) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                await ws.send_text("bye")
                assert await ws.receive_text() is None
                assert ws.close_code == 1006


async def test_between_turns_a_ping_is_answered_and_a_close_is_seen():
    pinged = trio.Event()

    async def pinging(peer: Peer):
        await peer.handshake()
        assert await peer.receive_text() == "idle from now on"
        await peer.send(Ping(payload=b"idle?"))
        pinged.set()
        await peer.wait_pong()
        await peer.send(TextMessage(data=await peer.receive_text()))
        await peer.send(CloseConnection(code=1000))  # and the connection ends

    async with scripted(pinging) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                await ws.send_text("idle from now on")
                await pinged.wait()
                await trio.lowlevel.wait_readable(ws._sock)  # the ping has reached this side, unread
                assert await ws.ready()
                await ws.send_text("echo")
                assert await ws.receive_text() == "echo"
                await server.wait_finished(1)
                await trio.lowlevel.wait_readable(ws._sock)
                assert not await ws.ready()
                assert ws.closed and ws.close_code == 1000


async def test_transport_failures_say_whether_a_message_was_written():
    async with scripted(lambda peer: peer.handshake()) as server:
        port = int(server.url.split(":")[2].split("/")[0])
    with trio.fail_after(5):
        with pytest.raises(RequestNotSent):  # nothing listens there any more
            async with connect(f"ws://127.0.0.1:{port}/v1/responses", KEY, connect_timeout_s=2):
                pass

    async def reset(peer: Peer):
        await peer.handshake()
        await peer.receive_text()
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with scripted(reset) as server:
        with trio.fail_after(5):
            async with connect(server.url, KEY) as ws:
                with WriteWatch.open() as watch:
                    await ws.send_text("hello")
                assert watch.written
                with pytest.raises(RequestBroken):
                    await ws.receive_text()
                assert ws.closed
