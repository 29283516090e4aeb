"""The log of a real ``tollhouse serve``: one access line per LLM call, in JSON on stdout.

One gateway process serves one request of each ending -- a whole and a streamed
answer, a 402, an upstream 429 and an upstream error, a client that leaves mid-stream,
a bad request, a WebSocket turn and a refused WebSocket handshake -- and its stdout (a pipe, so JSON lines) must hold
exactly one ``request`` line for each, with the fields an operator reads, none for
the health probe or the model list, the request's id on every line logged while it
ran, and no secret anywhere.
"""

from __future__ import annotations

import json
import signal

import httpx
import pytest
import trio

from providers.websocket import HandshakeRefused, connect
from tests.conftest import base_config
from tests.gateway_process import serve_process, write_config

UPSTREAM_KEY = "sk-upstream-log-test-0123456789abcdef"
GATEWAY_KEY = "th-log-test-key-0123456789"
POOR_KEY = "th-log-poor-key-0123456789"
ADMIN = "th-log-admin-token-0123456789"
SECRETS = (UPSTREAM_KEY, GATEWAY_KEY, POOR_KEY, ADMIN)
TOKEN_BUCKETS = {"input", "cached_input", "cache_write", "output", "reasoning"}


def _config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    doc["admin"] = {"token": ADMIN}
    doc["providers"]["sim"]["credentials"] = [{"id": "sim-a", "key": UPSTREAM_KEY}]
    doc["keys"] = [{"name": "main", "key": GATEWAY_KEY, "credit_usd": "100.00"},
                   {"name": "poor", "key": POOR_KEY, "credit_usd": "0.000001"}]
    doc["routing"] = {"budget_s": 0}  # a resting upstream is a 429 at once, not a wait
    doc["cooldown"] = {"jitter": 0}
    doc["simulator"] = {"tokens_per_second": 500}  # a long answer is still being written when its client leaves
    return doc


def _chat(model: str = "demo", stream: bool = False, text: str = "hello") -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}


def _auth(key: str = GATEWAY_KEY) -> dict:
    return {"authorization": f"Bearer {key}"}


async def _requests(url: str) -> dict[str, str]:
    """One request of each ending; returns each one's ``x-request-id`` by name."""
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        r = await http.post("/v1/chat/completions", json=_chat(), headers=_auth())
        assert r.status_code == 200
        ids["whole"] = r.headers["x-request-id"]
        async with http.stream("POST", "/v1/chat/completions", json=_chat(stream=True), headers=_auth()) as r:
            assert r.status_code == 200
            await r.aread()
        ids["stream"] = r.headers["x-request-id"]
        r = await http.post("/v1/chat/completions", json=_chat(), headers=_auth(POOR_KEY))
        assert r.status_code == 402
        ids["no_credit"] = r.headers["x-request-id"]
        r = await http.post("/v1/chat/completions", json=_chat("sim/sim-chat+status=429+retry_after=1"),
                            headers=_auth())
        assert r.status_code == 429
        ids["rate_limited"] = r.headers["x-request-id"]
        async with http.stream("POST", "/v1/chat/completions", headers=_auth(),
                               json=_chat("sim/sim-chat+tokens=5000", stream=True)) as r:
            assert r.status_code == 200
            async for _ in r.aiter_bytes():
                break  # the client leaves after the first bytes
        ids["cancel"] = r.headers["x-request-id"]
        r = await http.post("/v1/chat/completions", content=b'{"model": "demo", "messages": [', headers=_auth())
        assert r.status_code == 400
        ids["bad_request"] = r.headers["x-request-id"]
        r = await http.post("/v1/chat/completion", json=_chat(), headers=_auth())  # a path no route takes
        assert r.status_code == 404
        ids["no_route"] = r.headers["x-request-id"]
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/v1/models", headers=_auth())).status_code == 200
        ws_url = url.replace("http://", "ws://") + "/v1/responses"
        async with connect(ws_url, _auth()) as ws:
            await ws.send_text(json.dumps({"type": "response.create", "model": "demo", "input": "hi"}))
            while True:
                event = json.loads(await ws.receive_text())
                if event["type"] == "response.completed":
                    break
        with pytest.raises(HandshakeRefused) as refusal:
            async with connect(ws_url, _auth("th-not-a-key-0123456789")):
                pass
        assert refusal.value.status == 401
        ids["handshake"] = refusal.value.headers["x-request-id"]
        # last: a server error rests the only credential
        r = await http.post("/v1/chat/completions", json=_chat("sim/sim-chat+status=500"), headers=_auth())
        assert r.status_code >= 500
        ids["upstream_error"] = r.headers["x-request-id"]
    return ids


def _access(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("event") == "request" and e.get("logger") == "tollhouse.access"]


async def test_every_ending_makes_exactly_one_access_line_with_its_fields(tmp_path):
    with trio.fail_after(60):
        async with serve_process(write_config(tmp_path, _config(tmp_path))) as gateway:
            url = await gateway.url()
            ids = await _requests(url)
            # the 429's rest ends one second later, and says so
            await gateway.event("cooldown ended", provider="sim", credential="sim-a",
                                model="sim-chat+status=429+retry_after=1")
            for request_id in ids.values():
                await gateway.event("request", request_id=request_id)
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
            await gateway.until_exit()
    events = gateway.events
    assert len(events) == len(gateway.stdout), "every stdout line is one JSON object"
    lines = _access(events)
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == len(ids) + 1 == len(by_id), "one line per call and per WebSocket turn, none for probes"
    [stopping] = [e for e in events if e["event"].startswith("tollhouse stopping")]
    assert stopping["in_flight"] == 0, "every request had ended, and been logged, before the stop"
    [turn] = [line for line in lines if line["transport"] == "websocket" and line["status"] == 200]
    keys = set(by_id[ids["whole"]])
    assert all(set(line) == keys for line in lines), "every access line has the same fields"

    whole = by_id[ids["whole"]]
    assert {k: whole[k] for k in ("key", "protocol", "transport", "model", "stream", "status", "target", "provider",
                                  "credential", "reason", "provenance", "attempts", "failovers", "error")} == {
        "key": "main", "protocol": "openai_chat", "transport": "http", "model": "demo", "stream": False,
        "status": 200, "target": "sim/sim-chat", "provider": "sim", "credential": "sim-a", "reason": "end",
        "provenance": "reported", "attempts": 1, "failovers": 0, "error": None}
    assert set(whole["tokens"]) == TOKEN_BUCKETS and whole["tokens"]["output"] > 0 and whole["tokens"]["input"] > 0
    assert whole["cost_micro_usd"] > 0 and 0 < whole["ttfb_ms"] <= whole["duration_ms"]

    stream = by_id[ids["stream"]]
    assert (stream["stream"], stream["status"], stream["reason"], stream["provenance"]) == (True, 200, "end", "reported")
    assert stream["tokens"]["output"] > 0 and stream["ttfb_ms"] is not None

    poor = by_id[ids["no_credit"]]
    assert (poor["key"], poor["status"], poor["error"], poor["error_kind"]) == (
        "poor", 402, "OutOfCredit", "insufficient_quota")
    assert poor["attempts"] == 0 and poor["target"] is None

    limited = by_id[ids["rate_limited"]]
    assert (limited["key"], limited["status"], limited["error"], limited["reason"], limited["cost_micro_usd"]) == (
        "main", 429, "UpstreamRateLimited", "upstream_error", 0)
    assert limited["credential"] == "sim-a" and limited["attempts"] == 1

    cancel = by_id[ids["cancel"]]
    assert (cancel["status"], cancel["reason"], cancel["stream"]) == (200, "client_cancel", True)

    bad = by_id[ids["bad_request"]]
    assert (bad["key"], bad["status"], bad["error"], bad["attempts"], bad["model"]) == (
        "main", 400, "InvalidRequest", 0, None)

    assert (turn["protocol"], turn["model"], turn["status"], turn["reason"], turn["key"]) == (
        "openai_responses", "demo", 200, "end", "main")
    assert turn["tokens"]["output"] > 0 and turn["cost_micro_usd"] > 0

    nowhere = by_id[ids["no_route"]]
    assert (nowhere["status"], nowhere["error"], nowhere["protocol"]) == (404, "NotFound", "openai_chat")

    handshake = by_id[ids["handshake"]]
    assert (handshake["transport"], handshake["status"], handshake["error"], handshake["key"]) == (
        "websocket", 401, "Unauthenticated", None)

    failed = by_id[ids["upstream_error"]]
    assert failed["status"] >= 500 and failed["error"] and failed["credential"] == "sim-a"

    # lines logged while a request ran carry its id: the rests its failures began
    rest = [e for e in events if e.get("event") == "cooldown started" and e.get("request_id") == ids["rate_limited"]]
    assert [(e["credential"], e["scope"], e["reason"]) for e in rest] == [("sim-a", "model", "rate_limited")]
    assert any(e.get("event") == "cooldown started" and e.get("request_id") == ids["upstream_error"] for e in events)
    assert all(e.get("request_id") is None for e in events if e["logger"] == "tollhouse" or e["event"] == "cooldown ended")

    output = "\n".join(gateway.stdout + gateway.stderr)
    for secret in SECRETS:
        assert secret not in output
    assert "hello" not in output, "no prompt unless logging.log_prompts says so"


async def test_startup_and_stop_lines_say_where_and_what(tmp_path):
    config_path = write_config(tmp_path, _config(tmp_path))
    with trio.fail_after(30):
        async with serve_process(config_path) as gateway:
            url = await gateway.url()
            starting = await gateway.event("tollhouse starting")
            listening = await gateway.event("tollhouse listening on " + url)
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
            await gateway.until_exit()
    assert starting["config_file"] == str(config_path)
    assert starting["providers"] == {"sim": "simulator"} and starting["models"] == ["*", "demo"]
    assert (listening["address"], listening["admin_url"]) == (url, url + "/admin/ui")
    assert events_before(gateway.events, "tollhouse starting") == []  # the first line says what starts
    stopping = [e for e in gateway.events if e["event"].startswith("tollhouse stopping (SIGTERM)")]
    stopped = [e for e in gateway.events if e["event"].startswith("tollhouse stopped")]
    assert len(stopping) == len(stopped) == 1 and stopped[0]["cut"] == 0
    assert {e["level"] for e in gateway.events} <= {"info"}
    assert not [line for line in gateway.stderr if line.strip()], "hypercorn's lines are not doubled on stderr"
    texts = [e["event"] for e in gateway.events]
    assert len(texts) == len(set(texts)), "no line twice"


def events_before(events: list[dict], name: str) -> list[dict]:
    index = next(i for i, e in enumerate(events) if e["event"] == name)
    return events[:index]


async def test_log_prompts_adds_the_request_text_to_its_access_line(tmp_path):
    doc = _config(tmp_path)
    doc["logging"] = {"log_prompts": True, "level": "warning"}  # the flag below overrides the level
    with trio.fail_after(30):
        async with serve_process(write_config(tmp_path, doc), "--log-level", "info") as gateway:
            url = await gateway.url()
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post("/v1/chat/completions", json=_chat(text="tell me a story"), headers=_auth())
            line = await gateway.event("request", request_id=r.headers["x-request-id"])
    assert line["prompt"] == [{"role": "user", "text": "tell me a story"}]


async def test_a_warning_level_still_says_where_it_listens_and_when_it_stops(tmp_path):
    with trio.fail_after(30):
        async with serve_process(write_config(tmp_path, _config(tmp_path)), "--log-level", "warning") as gateway:
            url = await gateway.url()
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                assert (await http.post("/v1/chat/completions", json=_chat(), headers=_auth())).status_code == 200
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
            await gateway.until_exit()
    texts = [e["event"] for e in gateway.events]
    assert any(text.startswith("tollhouse stopped") for text in texts)
    assert "request" not in texts  # access lines are info


async def test_a_secret_a_reload_brings_is_redacted_from_the_log_from_then_on(tmp_path):
    doc = _config(tmp_path)
    path = write_config(tmp_path, doc)
    fresh_token = "th-reloaded-admin-token-0123456789"
    with trio.fail_after(30):
        async with serve_process(path) as gateway:
            url = await gateway.url()
            doc["admin"] = {"token": fresh_token}
            path.write_text(json.dumps(doc))
            gateway.send_signal(signal.SIGHUP)
            await gateway.line("tollhouse reloaded")
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                r = await http.post("/v1/chat/completions", json=_chat(model=fresh_token), headers=_auth())
            line = await gateway.event("request", request_id=r.headers["x-request-id"])
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0
            await gateway.until_exit()
    assert line["model"] == "[redacted]"
    assert fresh_token not in "\n".join(gateway.stdout + gateway.stderr)
