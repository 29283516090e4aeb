"""OpenTelemetry traces, exported to a local OTLP/HTTP receiver (``tests/otlp_receiver.py``).

The gateway exports from the SDK's worker thread; its stop exports what is buffered,
so each test reads the receiver once the gateway has stopped.
"""

from __future__ import annotations

import json
import signal
from contextlib import aclosing

import httpx
import pytest
import trio

pytest.importorskip("opentelemetry.sdk.trace", reason="needs the otel extra: pip install -e '.[test,otel]'")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs the otel extra: pip install -e '.[test,otel]'")

from opentelemetry import trace as otel_trace  # noqa: E402
from providers.sim_script import Fault  # noqa: E402
from providers.websocket import connect  # noqa: E402
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway  # noqa: E402
from tests.gateway_process import serve_process, write_config  # noqa: E402
from tests.otlp_receiver import OtlpReceiver, running_receiver  # noqa: E402

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
UPSTREAM_KEYS = ("sk-upstream-first-0001", "sk-upstream-second-0002")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PROMPT = "a prompt no trace may carry"


def _config(tmp_path, receiver: OtlpReceiver, **tracing) -> dict:
    doc = base_config(tmp_path)
    doc["providers"]["sim"]["credentials"] = [{"id": f"c{i}", "key": key} for i, key in enumerate(UPSTREAM_KEYS)]
    doc["tracing"] = {"otlp_endpoint": receiver.endpoint, "service_name": "tollhouse-test", **tracing}
    return doc


async def _chat(client: httpx.AsyncClient, stream: bool = False, headers: dict | None = None) -> httpx.Response:
    body = {"model": "demo", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]}
    return await client.post("/v1/chat/completions", json=body, headers={**AUTH, **(headers or {})})


def _traceparent(value: str) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a W3C traceparent."""
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_is_a_server_span_with_an_attempt_under_it_and_the_upstream_gets_its_context(
        tmp_path, stream):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver)) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    r = await _chat(client, stream=stream)
                    assert r.status_code == 200
                [entry] = gw.ledger_entries()
                [upstream_context] = gw.simulator.traceparents

    [server] = receiver.by_kind("server")
    [attempt] = receiver.by_kind("client")
    assert server.name == "chat demo" and attempt.name == "chat sim-chat"
    assert server.resource["service.name"] == "tollhouse-test"
    assert attempt.trace_id == server.trace_id and attempt.parent_span_id == server.span_id
    assert server.parent_span_id == ""  # the client sent no trace context: a new trace
    assert _traceparent(upstream_context) == (server.trace_id, attempt.span_id, True)

    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "demo" and a["gen_ai.response.model"] == "sim-chat"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "tollhouse.simulator"
    assert a["gen_ai.request.stream"] is stream
    assert a["gen_ai.usage.input_tokens"] == entry["input"] > 0
    assert a["gen_ai.usage.output_tokens"] == entry["output"] > 0
    assert a["http.response.status_code"] == 200 and a["tollhouse.status"] == 200
    assert a["tollhouse.request_id"] == r.headers["x-request-id"] == entry["request_id"]
    assert a["tollhouse.key_name"] == "test" and a["tollhouse.target"] == "sim/sim-chat"
    assert a["tollhouse.credential_id"] == entry["credential"]
    assert a["tollhouse.end_reason"] == "end" and a["tollhouse.provenance"] == "reported"
    assert a["tollhouse.cost_micro_usd"] == entry["amount_micro"] > 0
    assert a["tollhouse.attempts"] == 1 and a["tollhouse.transport"] == "http"
    assert server.status == "unset" and "error.type" not in a

    b = attempt.attributes
    assert b["gen_ai.request.model"] == b["gen_ai.response.model"] == "sim-chat"
    assert b["gen_ai.provider.name"] == "tollhouse.simulator"
    assert b["gen_ai.usage.input_tokens"] == entry["input"]
    assert b["gen_ai.usage.output_tokens"] == entry["output"]
    assert b["tollhouse.attempt.outcome"] == "answered" and b["server.address"] == "127.0.0.1"
    assert attempt.status == "unset"

    exported = b"".join(receiver.bodies)
    for secret in (DEMO_KEY, ADMIN_TOKEN, *UPSTREAM_KEYS):
        assert secret.encode() not in exported, "a secret reached the trace exporter"
    assert PROMPT.encode() not in exported  # nor the prompt
    # the gateway's spans went through its own provider: the process-wide one was never set
    assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)


@pytest.mark.parametrize(("protocol", "operation"), [
    ("anthropic", "chat"), ("gemini", "generate_content"), ("openai_responses", "chat")])
async def test_every_upstream_protocol_gets_the_attempt_context(tmp_path, protocol, operation):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            doc = _config(tmp_path, receiver)
            doc["providers"]["up"] = {"family": "simulator", "embedded": True, "protocol": protocol}
            doc["models"]["demo"] = {"targets": ["up/sim-model"]}
            doc["pricing"]["up/*"] = {"input": "1.00", "output": "2.00"}
            async with running_gateway(doc) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    assert (await _chat(client, stream=True)).status_code == 200
                [upstream_context] = gw.simulator.traceparents

    [attempt] = receiver.by_kind("client")
    assert _traceparent(upstream_context)[:2] == (attempt.trace_id, attempt.span_id)
    assert attempt.name == f"{operation} sim-model"
    assert attempt.attributes["gen_ai.operation.name"] == operation
    assert attempt.attributes["gen_ai.provider.name"] == "tollhouse.simulator"
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0


@pytest.mark.parametrize("sampled", [True, False])
async def test_a_client_traceparent_is_continued_to_the_upstream_with_its_sampling_decision(tmp_path, sampled):
    flags = "01" if sampled else "00"
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver)) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    r = await _chat(client, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-{flags}"})
                    assert r.status_code == 200
                [upstream_context] = gw.simulator.traceparents

    trace_id, parent_id, upstream_sampled = _traceparent(upstream_context)
    assert (trace_id, upstream_sampled) == (CLIENT_TRACE, sampled)
    if not sampled:  # the client said not to record this trace: nothing is exported, even at ratio 1
        assert receiver.spans == []
        return
    [server] = receiver.by_kind("server")
    [attempt] = receiver.by_kind("client")
    assert (server.trace_id, server.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert parent_id == attempt.span_id


async def test_an_unreachable_collector_neither_fails_a_request_nor_holds_the_stop(tmp_path):
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now: every export is refused
    doc = base_config(tmp_path)
    doc["tracing"] = {"otlp_endpoint": f"http://127.0.0.1:{port}"}
    with trio.fail_after(30):  # the stop waits for the exporter at most its bound (5 s)
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                for stream in (False, True):
                    assert (await _chat(client, stream=stream)).status_code == 200
            assert len(gw.ledger_entries()) == 2


async def test_a_failover_is_one_client_span_per_attempt_and_the_failed_one_is_an_error(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver)) as gw:
                gw.simulator.key_faults[UPSTREAM_KEYS[0]] = Fault(status=503)
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    assert (await _chat(client, stream=True)).status_code == 200
                contexts = list(gw.simulator.traceparents)

    [server] = receiver.by_kind("server")
    first, second = sorted(receiver.by_kind("client"), key=lambda s: s.attributes["tollhouse.attempt"])
    assert {first.parent_span_id, second.parent_span_id} == {server.span_id}
    assert (first.attributes["tollhouse.credential_id"], second.attributes["tollhouse.credential_id"]) == ("c0", "c1")
    assert first.status == "error" and first.attributes["error.type"] == "UpstreamOverloaded"
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["tollhouse.attempt.outcome"] == "refused"
    assert second.status == "unset" and second.attributes["tollhouse.attempt.outcome"] == "answered"
    assert server.status == "unset" and server.attributes["tollhouse.attempts"] == 2
    # each upstream request carried the context of its own attempt
    assert [_traceparent(c)[1] for c in contexts] == [first.span_id, second.span_id]


async def test_a_request_every_upstream_fails_is_an_error_span(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver)) as gw:
                for key in UPSTREAM_KEYS:
                    gw.simulator.key_faults[key] = Fault(status=500)
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    r = await _chat(client)
                    assert r.status_code == 502

    [server] = receiver.by_kind("server")
    assert server.status == "error" and server.attributes["http.response.status_code"] == 502
    assert server.attributes["error.type"] == "UpstreamServerError"
    assert server.attributes["tollhouse.end_reason"] == "upstream_error"
    assert [s.status for s in receiver.by_kind("client")] == ["error", "error"]


async def test_a_refused_request_is_a_span_but_a_client_error_is_not_a_server_error(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver)) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    r = await client.post("/v1/chat/completions", json={"model": "demo", "messages": []},
                                          headers={"authorization": "Bearer th-not-a-key"})
                    assert r.status_code == 401

    [server] = receiver.by_kind("server")
    assert receiver.by_kind("client") == []
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["error.type"] == "Unauthenticated" and server.status == "unset"
    assert b"th-not-a-key" not in b"".join(receiver.bodies)


async def test_a_client_that_leaves_mid_stream_still_ends_both_spans(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            doc = _config(tmp_path, receiver)
            doc["models"]["slow"] = {"targets": ["sim/sim-chat+stall_after=4"]}
            async with running_gateway(doc) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
                    async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
                        assert r.status_code == 200
                        async with aclosing(r.aiter_bytes()) as chunks:
                            async for _ in chunks:
                                break
                await gw.usage_actor.wait_settles(1)

    [server] = receiver.by_kind("server")
    [attempt] = receiver.by_kind("client")
    assert server.attributes["tollhouse.end_reason"] == "client_cancel"
    assert server.attributes["tollhouse.provenance"] == "estimated"
    assert server.status == "unset" and attempt.status == "unset"  # the client's choice, no failure
    assert attempt.attributes["tollhouse.attempt.outcome"] == "answered"


async def test_sample_ratio_zero_exports_nothing_but_still_propagates_an_unsampled_context(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            async with running_gateway(_config(tmp_path, receiver, sample_ratio=0)) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                    for stream in (False, True):
                        assert (await _chat(client, stream=stream)).status_code == 200
                contexts = list(gw.simulator.traceparents)

    assert receiver.spans == []
    assert len(contexts) == 2 and not any(_traceparent(c)[2] for c in contexts)


async def test_each_websocket_turn_is_its_own_server_span(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            doc = _config(tmp_path, receiver)
            doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
            doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
            doc["pricing"]["simr/*"] = {"input": "1.00", "output": "2.00"}
            async with running_gateway(doc) as gw:
                url = gw.url.replace("http://", "ws://") + "/v1/responses"
                headers = {**AUTH, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
                async with connect(url, headers) as ws:
                    for question in ("first", "second"):
                        await ws.send_text(json.dumps({"type": "response.create", "model": "gpt-sim",
                                                       "input": question, "store": False}))
                        while json.loads(await ws.receive_text())["type"] != "response.completed":
                            pass

    servers = receiver.by_kind("server")
    assert len(servers) == 2 and len(receiver.by_kind("client")) == 2
    assert {s.attributes["tollhouse.transport"] for s in servers} == {"websocket"}
    assert {(s.trace_id, s.parent_span_id) for s in servers} == {(CLIENT_TRACE, CLIENT_SPAN)}
    assert all(s.name == "chat gpt-sim" and s.attributes["gen_ai.usage.output_tokens"] > 0 for s in servers)
    assert "http.response.status_code" not in servers[0].attributes and servers[0].attributes["tollhouse.status"] == 200


async def test_an_upstream_websocket_carries_the_context_of_the_turn_that_opened_it(tmp_path):
    with trio.fail_after(30):
        async with running_receiver() as receiver:
            doc = _config(tmp_path, receiver)
            doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses",
                                        "websocket": True}
            doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
            doc["pricing"]["simr/*"] = {"input": "1.00", "output": "2.00"}
            async with running_gateway(doc) as gw:
                url = gw.url.replace("http://", "ws://") + "/v1/responses"
                async with connect(url, AUTH) as ws:
                    for question in ("first", "second"):
                        await ws.send_text(json.dumps({"type": "response.create", "model": "gpt-sim",
                                                       "input": question, "store": False}))
                        while json.loads(await ws.receive_text())["type"] != "response.completed":
                            pass
                assert gw.simulator.websocket_connections == 1
                [handshake_context] = gw.simulator.traceparents

    turns = sorted(receiver.by_kind("server"), key=lambda s: s.attributes["tollhouse.request_id"])  # ids count up
    assert len(turns) == 2 and turns[0].trace_id != turns[1].trace_id  # no client context: a trace per turn
    opener = next(s for s in receiver.by_kind("client") if s.parent_span_id == turns[0].span_id)
    assert _traceparent(handshake_context)[:2] == (turns[0].trace_id, opener.span_id)


async def test_a_served_gateway_exports_its_last_spans_when_it_is_stopped(tmp_path):
    """``tollhouse serve`` as a process: the spans of the last requests leave before it exits."""
    with trio.fail_after(60):
        async with running_receiver() as receiver:
            async with serve_process(write_config(tmp_path, _config(tmp_path, receiver))) as gateway:
                async with httpx.AsyncClient(base_url=await gateway.url(), timeout=10) as client:
                    for stream in (False, True):
                        assert (await _chat(client, stream=stream)).status_code == 200
                gateway.send_signal(signal.SIGTERM)
                assert await gateway.wait() == 0

    assert len(receiver.by_kind("server")) == 2 and len(receiver.by_kind("client")) == 2
