"""The simulator's Responses WebSocket mode, as a WebSocket client sees it."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import pytest
import trio

from providers.sim_script import Fault
from providers.simulator import Simulator
from providers.sim_websocket import SimTurn
from providers.websocket import HandshakeRefused, connect

KEY = "sk-sim-upstream"
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@asynccontextmanager
async def socket(path: str = "/v1/responses", key: str = KEY):
    sim = Simulator()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        try:
            async with connect(url.replace("http://", "ws://") + path, {"authorization": f"Bearer {key}"}) as ws:
                yield sim, ws
        finally:
            nursery.cancel_scope.cancel()


async def turn(ws, **body) -> list[dict]:
    """Send one response.create; the events up to the turn's last one (a refusal is one
    ``error`` frame with a status; an in-stream ``error`` is followed by ``response.failed``)."""
    await ws.send_text(json.dumps({"type": "response.create", **body}))
    events: list[dict] = []
    while not events or not (events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed")
                             or "status" in events[-1]):
        events.append(json.loads(await ws.receive_text()))
    return events


async def test_two_turns_chain_on_one_connection_through_a_tool_round_trip():
    async with socket() as (sim, ws):
        with trio.fail_after(5):
            first = await turn(ws, model="sim-responses", input="What is the weather in Paris?", tools=TOOLS,
                               store=False, stream=True)
            done = first[-1]["response"]
            call = next(item for item in done["output"] if item["type"] == "function_call")
            second = await turn(ws, model="sim-responses", previous_response_id=done["id"], tools=TOOLS, store=False,
                                input=[{"type": "function_call_output", "call_id": call["call_id"],
                                        "output": "sunny, 21C"}])
        assert sim.websocket_connections == 1 and sim.websocket_open == 1
    assert [e["type"] for e in first][:2] == ["response.created", "response.in_progress"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert second[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in second if e["type"] == "response.output_text.delta")
    assert text == "The tool returned: sunny, 21C"
    assert [t.previous_response_id for t in sim.ws_turns] == [None, done["id"]]
    # the HTTP side's records, kept for the socket's turns too
    assert [b["model"] for b in sim.bodies] == ["sim-responses", "sim-responses"]
    usage = second[-1]["response"]["usage"]
    assert sim.reported[-1].input == usage["input_tokens"] and sim.reported[-1].output == usage["output_tokens"]
    assert sim.requests_by_key == {KEY: 2}


async def test_a_previous_response_id_the_connection_did_not_make_is_an_error_frame():
    async with socket() as (sim, ws):
        with trio.fail_after(5):
            [error] = await turn(ws, model="sim-responses", input="hi", previous_response_id="resp_elsewhere")
            answered = await turn(ws, model="sim-responses", input="hi")  # the connection is still usable
            rid = answered[-1]["response"]["id"]
            await turn(ws, model="sim-responses", input="again", previous_response_id=rid)
            [stale] = await turn(ws, model="sim-responses", input="hi", previous_response_id=rid)
    assert error == {"type": "error", "status": 400, "error": {
        "type": "invalid_request_error", "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_elsewhere' not found.", "param": "previous_response_id"}}
    assert answered[-1]["type"] == "response.completed"
    assert stale["error"]["code"] == "previous_response_not_found"  # only the last response is kept


async def test_generate_false_answers_an_empty_response_that_can_be_chained_from():
    async with socket(path="/responses") as (sim, ws):
        with trio.fail_after(5):
            prewarm = await turn(ws, model="sim-responses", generate=False, instructions="You are terse.")
            chained = await turn(ws, model="sim-responses", input="hi", previous_response_id=prewarm[-1]["response"]["id"])
    assert [e["type"] for e in prewarm] == ["response.created", "response.completed"]
    done = prewarm[-1]["response"]
    assert done["output"] == [] and done["usage"]["input_tokens"] == 0 and done["usage"]["output_tokens"] == 0
    assert chained[-1]["type"] == "response.completed"
    assert sim.ws_turns[0] == SimTurn("sim-responses", KEY, None, False)
    assert sim.streams_sent == 1


async def test_faults_apply_per_turn_and_per_key():
    async with socket() as (sim, ws):
        with trio.fail_after(5):
            [limited] = await turn(ws, model="sim-responses+status=429+retry_after=9", input="hi")
            failed = await turn(ws, model="sim-responses+error_after=2", input="hi")
            sim.key_faults[KEY] = Fault(status=503)
            [overloaded] = await turn(ws, model="sim-responses", input="hi")
    assert limited["status"] == 429 and limited["headers"] == {"retry-after": "9"}
    assert limited["error"]["code"] == "rate_limit_exceeded"
    assert [e["type"] for e in failed][-2:] == ["error", "response.failed"]
    assert overloaded["status"] == 503


async def test_a_key_whose_fault_has_a_status_is_refused_before_the_101():
    sim = Simulator()
    sim.key_faults["sk-revoked"] = Fault(status=401)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sim.serve)
        with trio.fail_after(5):
            with pytest.raises(HandshakeRefused) as refused:
                async with connect(url.replace("http://", "ws://") + "/v1/responses",
                                   {"authorization": "Bearer sk-revoked"}):
                    pass
        nursery.cancel_scope.cancel()
    assert refused.value.status == 401
    assert json.loads(refused.value.body)["error"]["code"] == "invalid_api_key"
    assert sim.websocket_connections == 0 and sim.ws_turns == []


async def test_a_disconnect_fault_closes_the_socket_mid_turn_and_the_counts_follow():
    async with socket() as (sim, ws):
        with trio.fail_after(5):
            await ws.send_text(json.dumps({"type": "response.create", "model": "sim-responses+disconnect_after=3",
                                           "input": "hi"}))
            received = []
            while (text := await ws.receive_text()) is not None:
                received.append(json.loads(text)["type"])
            await sim.wait_websocket_open(0)
            await sim.wait_idle()
    assert received[0] == "response.created" and "response.completed" not in received
    assert ws.close_code == 1011
    assert sim.websocket_connections == 1
