"""Transform traces end to end: a real gateway, a raw upstream that captures what it is
sent (or the embedded simulator), and the trace read back at ``/admin/traces/{id}``.

A traced request shows every pass in order -- translated (an Anthropic client of a
Chat upstream with adapters) and a same-protocol stream; untraced requests write
nothing; ``errors_only``, ``keys``, truncation and the file cap do what they say; and
no trace, log line or admin answer holds an upstream credential, a gateway key or the
admin token.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.raw_upstream import RawUpstream
from tests.test_adapters_gateway import ANTHROPIC_AUTH, CHAT_AUTH, STREAM, UPSTREAM_KEY, readme_vendor, vendor

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
TRACE_ME = {"x-tollhouse-trace": "1"}


def acme_config(tmp_path: Path, upstream: RawUpstream, **trace) -> dict:
    """The README's vendor (``max_completion_tokens``, ``top_p`` dropped) in front of ``upstream``."""
    doc = base_config(tmp_path)
    acme = readme_vendor()
    acme["base_url"] = f"{upstream.url}/v1"
    acme["credentials"] = [{"id": "acme-1", "key": UPSTREAM_KEY}]
    doc["providers"]["acme"] = acme
    doc["models"]["acme"] = {"targets": ["acme/acme-1"]}
    doc["pricing"]["acme/*"] = {"input": "1.00", "output": "2.00"}
    doc["trace"] = {"enabled": True, **trace}
    return doc


def trace_files(doc: dict) -> list[Path]:
    return sorted((Path(doc["state_dir"]) / "traces").glob("*.jsonl"))


async def read_trace(http: httpx.AsyncClient, request_id: str) -> dict:
    r = await http.get(f"/admin/traces/{request_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def passes(trace: dict) -> list[str]:
    return [s["pass"] for s in trace["states"]]


async def test_a_translated_request_shows_every_pass_in_order(tmp_path):
    upstream = RawUpstream(vendor)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            doc = acme_config(tmp_path, upstream)
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
                body = {"model": "acme", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                        "messages": [{"role": "user", "content": "hi"}]}
                r = await http.post("/v1/messages", headers={**ANTHROPIC_AUTH, **TRACE_ME}, json=body)
                assert r.status_code == 200
                trace = await read_trace(http, r.headers["x-request-id"])
            nursery.cancel_scope.cancel()
    assert trace["request_id"] == r.headers["x-request-id"] and trace["reason"] == "header"
    assert trace["key"] == "test" and trace["protocol"] == "anthropic" and trace["failed"] is False
    assert passes(trace) == ["received", "unified", "adapter", "adapter", "adapter", "sent", "upstream",
                             "unified_answer", "client"]
    received, unified, built, renamed, dropped, sent, answer, unified_answer, client = trace["states"]
    assert received["body"] == body
    assert unified["request"]["type"] == "UnifiedRequest" and unified["request"]["max_tokens"] == 50
    # the provider's Chat body, then each adapter in the chain's fixed order
    assert [built["adapter"], renamed["adapter"], dropped["adapter"]] == [
        "(built)", "max_completion_tokens", "drop_params"]
    assert built["body"]["max_tokens"] == 50 and built["body"]["top_p"] == 0.9
    assert renamed["body"]["max_completion_tokens"] == 50 and "max_tokens" not in renamed["body"]
    assert "top_p" in renamed["body"] and "top_p" not in dropped["body"]
    assert all(s["attempt"] == 0 for s in (built, renamed, dropped, sent, answer, unified_answer))
    # as sent: the body the upstream got, its auth header named but not shown
    assert sent["body"] == json.loads(upstream.bodies[-1]) == dropped["body"]
    assert sent["url"] == f"{upstream.url}/v1/chat/completions" and sent["target"] == "acme/acme-1"
    assert sent["headers"]["authorization"] == "[redacted]"
    assert answer["status"] == 200 and answer["body"]["id"] == "chatcmpl-acme"
    assert unified_answer["response"]["type"] == "UnifiedResponse"
    assert client["status"] == 200 and client["body"] == r.json()
    assert client["body"]["content"][-1] == {"type": "text", "text": "hello"}


async def test_a_same_protocol_stream_shows_its_event_sequences(tmp_path):
    upstream = RawUpstream(vendor)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            doc = acme_config(tmp_path, upstream)
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
                body = {"model": "acme", "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "hi"}]}
                async with http.stream("POST", "/v1/chat/completions", headers={**CHAT_AUTH, **TRACE_ME},
                                       json=body) as r:
                    got = await r.aread()
                assert got == STREAM  # tracing changes no byte of a pass-through
                trace = await read_trace(http, r.headers["x-request-id"])
            nursery.cancel_scope.cancel()
    assert passes(trace) == ["received", "unified", "adapter", "adapter", "adapter", "sent", "upstream",
                             "unified_answer", "client"]
    states = {s["pass"]: s for s in trace["states"]}
    events = [e for e in STREAM.decode().split("\n\n") if e]
    assert states["upstream"]["status"] == 200 and states["upstream"]["events"] == events
    assert states["client"]["events"] == events and states["client"]["truncated"] is False
    assert states["client"]["headers"]["content-type"].startswith("text/event-stream")
    kinds = [e["type"] for e in states["unified_answer"]["events"]]
    assert "TextDelta" in kinds and "Finish" in kinds and "UsageReport" in kinds


async def test_untraced_requests_write_nothing(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "sample_ratio": 0.0})
    off = base_config(tmp_path / "off", trace={"enabled": False, "keys": ["test"], "sample_ratio": 1.0})
    with trio.fail_after(20):
        for config, headers in ((doc, CHAT_AUTH), (off, {**CHAT_AUTH, **TRACE_ME})):
            async with running_gateway(config) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
                for stream in (False, True):
                    r = await http.post("/v1/chat/completions", headers=headers, json={
                        "model": "demo", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
                    assert r.status_code == 200
                    missing = await http.get(f"/admin/traces/{r.headers['x-request-id']}", headers=ADMIN)
                    assert missing.status_code == 404
                    assert missing.json()["error"]["type"] == "not_found_error"
                state = (await http.get("/admin/traces", headers=ADMIN)).json()
                assert state["written"] == 0 and state["files"] == []
            assert trace_files(config) == []


async def test_errors_only_writes_the_failing_request_only(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "sample_ratio": 1.0, "errors_only": True})
    doc["routing"] = {"budget_s": 0}
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            ok = await http.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                "model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            bad = await http.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                "model": "sim/sim-chat+status=503", "messages": [{"role": "user", "content": "hi"}]})
            assert ok.status_code == 200 and bad.status_code >= 500
            assert (await http.get(f"/admin/traces/{ok.headers['x-request-id']}", headers=ADMIN)).status_code == 404
            trace = await read_trace(http, bad.headers["x-request-id"])
    assert trace["failed"] is True and trace["reason"] == "sample"
    states = {s["pass"]: s for s in trace["states"]}
    assert states["upstream"]["status"] == 503
    assert states["client"]["status"] == bad.status_code and states["client"]["body"] == bad.json()
    assert len([line for f in trace_files(doc) for line in f.read_text().splitlines()]) == 1


async def test_a_key_in_keys_is_always_traced(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "keys": ["traced"]})
    doc["keys"].append({"name": "traced", "key": "th-traced-key", "credit_usd": "10.00"})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            ids = {}
            for key in (DEMO_KEY, "th-traced-key"):
                r = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json={
                    "model": "demo", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
                ids[key] = r.headers["x-request-id"]
            trace = await read_trace(http, ids["th-traced-key"])
            untraced = await http.get(f"/admin/traces/{ids[DEMO_KEY]}", headers=ADMIN)
    assert trace["reason"] == "key" and trace["key"] == "traced"
    assert untraced.status_code == 404


async def test_a_long_stream_is_truncated_and_marked(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "max_bytes_per_request": 16 * 1024})
    with trio.fail_after(30):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            async with http.stream("POST", "/v1/messages", headers={**ANTHROPIC_AUTH, **TRACE_ME}, json={
                    "model": "sim/sim-chat+tokens=3000", "max_tokens": 4000, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status_code == 200
                await r.aread()
            trace = await read_trace(http, r.headers["x-request-id"])
    line = json.dumps(trace)
    assert len(line) < 16 * 1024 + 4096  # the states within their budget, plus the line's own fields
    states = {s["pass"]: s for s in trace["states"]}
    for name in ("upstream", "unified_answer", "client"):
        assert states[name]["truncated"] is True and states[name]["events_dropped"] > 0, name
        assert states[name]["events"], name  # the first events kept
    assert passes(trace)[-1] == "client"


async def test_the_days_file_cap_drops_and_counts(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "sample_ratio": 1.0, "max_file_bytes": 6000})
    with trio.fail_after(30):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            ids = []
            for _ in range(6):
                r = await http.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                    "model": "demo", "messages": [{"role": "user", "content": "hi"}]})
                ids.append(r.headers["x-request-id"])
            await read_trace(http, ids[0])
            state = (await http.get("/admin/traces", headers=ADMIN)).json()
            last = await http.get(f"/admin/traces/{ids[-1]}", headers=ADMIN)
    [file] = trace_files(doc)
    assert file.stat().st_size <= 6000
    assert state["written"] >= 1 and state["dropped_file_cap"] >= 1
    assert state["written"] + state["dropped_file_cap"] == 6
    assert last.status_code == 404  # dropped past the cap


async def test_the_trace_endpoint_is_admin_only_and_answers_unknown_ids_in_json(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            r = await http.get("/admin/traces/req_0123", headers={"authorization": f"Bearer {DEMO_KEY}"})
            assert r.status_code == 401 and r.json()["error"]["type"]
            for rid in ("req_unknown", "..%2F..%2Fetc", "x" * 100):
                r = await http.get(f"/admin/traces/{rid}", headers=ADMIN)
                assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", rid


@pytest.mark.parametrize("bad", [{"enabled": "yes"}, {"sample_ratio": 2}, {"header": "x trace"},
                                 {"max_file_bytes": 0}, {"sampel_ratio": 0.1}])
def test_a_bad_trace_setting_is_refused_with_its_path(tmp_path, bad):
    from gateway.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as refused:
        parse_config(base_config(tmp_path, trace=bad), env={})
    assert f"trace.{next(iter(bad))}" in str(refused.value)


def test_secrets_leave_structurally_before_any_redactor():
    from gateway.transform_trace import scrub_fields, scrub_headers, scrub_url
    assert scrub_url("https://u:pw@g.example/v1beta/models/x:streamGenerateContent?alt=sse&key=AIzaXYZ") == \
        "https://g.example/v1beta/models/x:streamGenerateContent?alt=sse&key=[redacted]"
    assert scrub_headers({"Authorization": "Bearer k", "x-api-key": "k", "x-goog-api-key": "k", "api-key": "k",
                          "content-type": "application/json"}) == {
        "Authorization": "[redacted]", "x-api-key": "[redacted]", "x-goog-api-key": "[redacted]",
        "api-key": "[redacted]", "content-type": "application/json"}
    assert scrub_fields({"key": "k", "nested": [{"api_key": "k", "max_tokens": 5}]}) == {
        "key": "[redacted]", "nested": [{"api_key": "[redacted]", "max_tokens": 5}]}


async def test_a_failover_shows_each_attempts_passes(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True})
    doc["providers"]["spare"] = {"family": "simulator", "embedded": True, "protocol": "openai_chat"}
    doc["pricing"]["spare/*"] = {"input": "1.00", "output": "2.00"}
    doc["models"]["fo"] = {"targets": ["sim/sim-chat+status=503", "spare/sim-chat"]}
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            r = await http.post("/v1/chat/completions", headers={**CHAT_AUTH, **TRACE_ME}, json={
                "model": "fo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            trace = await read_trace(http, r.headers["x-request-id"])
    assert passes(trace) == ["received", "unified", "sent", "upstream", "sent", "upstream", "unified_answer",
                             "client"]
    first_sent, first_answer, second_sent, second_answer = trace["states"][2:6]
    assert (first_sent["attempt"], first_sent["target"]) == (0, "sim/sim-chat+status=503")
    assert first_answer["attempt"] == 0 and first_answer["status"] == 503
    assert (second_sent["attempt"], second_sent["target"]) == (1, "spare/sim-chat")
    assert second_answer["status"] == 200 and trace["failed"] is False
    assert trace["states"][-1]["body"] == r.json()


async def test_a_reload_turns_traces_on(tmp_path):
    from tests.test_reload import _gateway, _reload
    doc = base_config(tmp_path)
    ask = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(20):
        async with _gateway(tmp_path, doc) as (gw, path), httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            before = await http.post("/v1/chat/completions", headers={**CHAT_AUTH, **TRACE_ME}, json=ask)
            assert (await _reload(http, path, {**doc, "trace": {"enabled": True}})).status_code == 200
            after = await http.post("/v1/chat/completions", headers={**CHAT_AUTH, **TRACE_ME}, json=ask)
            assert (await http.get(f"/admin/traces/{before.headers['x-request-id']}",
                                   headers=ADMIN)).status_code == 404
            assert (await read_trace(http, after.headers["x-request-id"]))["reason"] == "header"


async def test_websocket_turns_on_a_websocket_upstream_are_traced(tmp_path):
    from providers.websocket import connect
    doc = base_config(tmp_path, trace={"enabled": True})
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses",
                                "websocket": True}
    doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
    doc["pricing"]["simr/*"] = {"input": "1.00", "output": "2.00"}
    with trio.fail_after(30):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            url = gw.url.replace("http://", "ws://") + "/v1/responses"
            async with connect(url, {**CHAT_AUTH, **TRACE_ME}) as ws:
                await ws.send_text(json.dumps({"type": "response.create", "model": "gpt-sim", "input": "hi",
                                               "store": False}))
                while json.loads(await ws.receive_text())["type"] != "response.completed":
                    pass
            [row] = (await http.get("/admin/requests", headers=ADMIN)).json()["requests"]
            trace = await read_trace(http, row["request_id"])
    assert trace["transport"] == "websocket" and trace["reason"] == "header"
    assert trace["states"][0]["body"]["type"] == "response.create"
    states = {s["pass"]: s for s in trace["states"]}
    assert "sent" not in states  # the upstream socket's message is not an HTTP request
    assert any('"response.completed"' in e for e in states["upstream"]["events"])
    assert any(e["type"] == "Finish" for e in states["unified_answer"]["events"])
    assert states["client"]["events"]


async def test_an_unwritable_trace_directory_loses_traces_not_requests(tmp_path):
    doc = base_config(tmp_path, trace={"enabled": True, "sample_ratio": 1.0})
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "traces").write_text("not a directory")
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            for _ in range(2):
                r = await http.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                    "model": "demo", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
                missing = await http.get(f"/admin/traces/{r.headers['x-request-id']}", headers=ADMIN)
                assert missing.status_code == 404
            state = (await http.get("/admin/traces", headers=ADMIN)).json()
    assert state["dropped_write_error"] == 2 and state["written"] == 0


async def test_a_provider_retry_shows_both_requests_it_sent(tmp_path):
    """A Chat upstream that rejects ``stream_options`` is asked again without it: both
    requests, and the refusal between them, are in the trace."""
    doc = base_config(tmp_path, trace={"enabled": True})
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
            r = await http.post("/v1/messages", headers={**ANTHROPIC_AUTH, **TRACE_ME}, json={
                "model": "sim/sim-chat+reject_stream_options=openai", "max_tokens": 50, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            trace = await read_trace(http, r.headers["x-request-id"])
    assert passes(trace) == ["received", "unified", "sent", "upstream", "sent", "upstream", "unified_answer",
                             "client"]
    first, refusal, second, answer = trace["states"][2:6]
    assert first["body"]["stream_options"] == {"include_usage": True} and "stream_options" not in second["body"]
    assert refusal["status"] == 400 and "stream_options" in json.dumps(refusal["body"])
    assert answer["status"] == 200 and answer["events"]
    assert {first["attempt"], second["attempt"]} == {0}
    assert any(e.startswith("event: message_stop") for e in trace["states"][-1]["events"])
