"""Where money leaks, through real sockets: cut streams, early cancels, unreadable
answers, failures before anything was sent.

The upstream is a recorded provider stream (``tests/fixtures``) replayed by a real
HTTP server, whole, cut short with a clean end of body, or paused mid-way.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import attrs
import httpx
import openai
import pytest
import trio
import trio.testing

from protocols.money import Price, cost_micro_usd
from protocols.sse import SSEDecoder
from protocols.tokens import count_text_tokens
from protocols.unified import ReasoningDelta, TextDelta, ToolCallDelta, Usage, UsageReport
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.replay import Replay
from tests.test_endings import STREAMS, _frames
from tests.test_settlement_matrix import request

FAMILY = {"openai-chat": ("openai_compat", "/v1", "chat"), "openai-responses": ("openai", "/v1", "responses"),
          "anthropic": ("anthropic", "", "anthropic"), "gemini": ("gemini", "", "gemini")}
PRICE = Price(input=Decimal("1"), output=Decimal("2"))
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _config(tmp_path: Path, url: str, family_dir: str, **streaming) -> dict:
    family, suffix, _ = FAMILY[family_dir]
    doc = base_config(tmp_path)
    doc["providers"]["rec"] = {"family": family, "base_url": url + suffix,
                               "credentials": [{"id": "r1", "key": "sk-recorded"}]}
    doc["models"]["m"] = {"targets": ["rec/recorded"]}
    doc["pricing"]["rec/*"] = {"input": "1", "output": "2"}
    doc["streaming"] = {"ttfb_timeout_s": 30, "stall_timeout_s": 30, **streaming}
    return doc


def _boundaries(path: Path) -> list[bytes]:
    """The fixture's events as the bytes each one takes on the wire."""
    _, framer = _frames(path, light=False)
    return [f.raw for f in framer.feed(path.read_bytes()) + framer.close()]


def _client_request(client: str, path: Path, content: str = "hi") -> tuple[str, dict, dict]:
    url, body, headers = request(client, stream=True)
    if client == "gemini" and path.suffix == ".json":
        url = url.replace("?alt=sse", "")  # the JSON-array fixture answers a client that asked for one
    if content != "hi":
        if client == "responses":
            body["input"] = content
        elif client == "gemini":
            body["contents"][0]["parts"][0]["text"] = content
        else:
            body["messages"][0]["content"] = content
    return url, body, headers


def _clients_for(path: Path) -> list[str]:
    if path.parent.name == "gemini" and path.suffix == ".json":
        return ["gemini"]
    return ["chat", "responses", "anthropic", "gemini"]


def _events(body: bytes) -> list[tuple[str | None, bytes]]:
    decoder = SSEDecoder()
    return [(ev.event, ev.data) for ev in decoder.feed(body) + decoder.close() if ev.data is not None]


def _assert_error_ending(client: str, body: bytes, json_array: bool) -> None:
    """The client's own protocol says the stream failed, and nothing says it succeeded."""
    if json_array:
        elements = json.loads(body)
        assert "error" in elements[-1], elements[-1]
        return
    events = _events(body)
    names = [name for name, _ in events]
    last_name, last = events[-1]
    if client == "chat":
        assert b'"error"' in last and b"[DONE]" not in body
    elif client == "responses":
        assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
    elif client == "anthropic":
        assert last_name == "error" and "message_stop" not in names
    else:
        assert b'"error"' in last


CUT = [(p, c) for p in STREAMS for c in _clients_for(p)]


@pytest.mark.parametrize("path,client", CUT, ids=[f"{p.parent.name}/{p.stem}-{c}" for p, c in CUT])
async def test_a_stream_cut_short_is_an_error_for_every_client(tmp_path, path, client):
    raws = _boundaries(path)
    replay = Replay(path.read_bytes(), content_type="application/json" if path.suffix == ".json"
                    else "text/event-stream", cut_at=sum(len(r) for r in raws[:max(1, len(raws) // 2)]))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            async with running_gateway(_config(tmp_path, replay.url, path.parent.name)) as gw:
                url, body, headers = _client_request(client, path)
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                    r = await http.post(url, json=body, headers=headers)
                    records = (await http.get("/admin/usage/records", params={
                        "request_id": r.headers["x-request-id"]}, headers=ADMIN)).json()
            nursery.cancel_scope.cancel()
    assert r.status_code == 200
    _assert_error_ending(client, r.content, json_array=path.suffix == ".json")
    [charge] = [e for e in records["records"] if e["kind"] == "charge"]
    assert charge["reason"] == "upstream_error" and charge["cost_source"] == "pricing"
    assert replay.requests == 1


async def test_the_openai_sdk_reports_a_cut_responses_stream_as_an_api_error(tmp_path):
    path = next(p for p in STREAMS if p.name == "stream-text-2025-03.sse")
    raws = _boundaries(path)
    replay = Replay(path.read_bytes(), cut_at=sum(len(r) for r in raws[:len(raws) // 2]))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            async with running_gateway(_config(tmp_path, replay.url, "openai-responses")) as gw:
                sdk = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)
                try:
                    with pytest.raises(openai.APIError, match="before its last event"):
                        async with sdk.responses.stream(model="m", input="hi") as stream:
                            async for _ in stream:
                                pass
                finally:
                    await sdk.close()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ early cancel

# Recordings whose output is all visible (no hidden reasoning) and whose input is known
# when the stream starts (not the web-search one: its search results add input later).
VISIBLE = ["openai-chat/stream-text-include-usage.sse", "openai-chat/stream-tool-call-include-usage.sse",
           "openai-responses/stream-text-2025-03.sse", "openai-responses/stream-function-call-2025-03.sse",
           "anthropic/stream-text-ping-padding.sse", "anthropic/stream-tool-use-input-json-delta.sse",
           "anthropic/stream-thinking-signature-delta.sse",
           "gemini/stream-sse-thoughts-token-count.sse", "gemini/stream-json-array-no-alt-sse.json",
           "openai-chat/stream-openrouter-comments-cached-reasoning.sse"]
FIXTURES = Path(__file__).parent / "fixtures"


def _consumed(path: Path, upto: int) -> tuple[Usage, Usage]:
    """(the recording's final usage, what its first ``upto`` events consumed).

    Consumed: the input the provider reported by then (else its final figure) and the
    output forwarded by then -- or what the provider reported by then, if more.
    """
    _, framer = _frames(path, light=False)
    frames = framer.feed(path.read_bytes()) + framer.close()
    usage, early, text, reasoning = None, None, [], []
    for k, frame in enumerate(frames):
        for ev in frame.events:
            if isinstance(ev, UsageReport):
                usage = ev.usage
                early = ev.usage if k < upto else early
            elif k < upto and isinstance(ev, TextDelta):
                text.append(ev.text)
            elif k < upto and isinstance(ev, ToolCallDelta):
                text.append(ev.arguments)
            elif k < upto and isinstance(ev, ReasoningDelta) and ev.text:
                reasoning.append(ev.text)
    known = early or Usage(input=usage.input, cached_input=usage.cached_input, cache_write=usage.cache_write)
    return usage, attrs.evolve(known, output=max(known.output, count_text_tokens("".join(text))),
                               reasoning=max(known.reasoning, count_text_tokens("".join(reasoning))))


async def _cancel_midway(gw, replay: Replay, client: str, path: Path, content: str) -> str:
    """Open a stream, wait until the upstream paused and the gateway forwarded it all, hang up."""
    url, body, headers = _client_request(client, path, content)
    async with httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
        async with http.stream("POST", url, json=body, headers=headers) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            async with trio.open_nursery() as nursery:
                async def read() -> None:
                    async for _ in r.aiter_raw():
                        pass
                nursery.start_soon(read)
                await replay.paused.wait()
                await trio.testing.wait_all_tasks_blocked(0.05)
                nursery.cancel_scope.cancel()
    await replay.closed.wait()
    await gw.usage_actor.wait_settles(1)
    return request_id


EARLY = [(name, client) for name in VISIBLE for client in ("same", "chat")
         if not (name.endswith(".json") and client == "chat")]  # a JSON array answers only its own kind


@pytest.mark.parametrize("name,client", EARLY, ids=[f"{c}-{n}" for n, c in EARLY])
async def test_an_early_cancel_is_charged_what_was_consumed(tmp_path, name, client):
    path = FIXTURES / name
    family_dir = path.parent.name
    client = FAMILY[family_dir][2] if client == "same" else client
    raws = _boundaries(path)
    upto = max(2, len(raws) // 2)
    usage, consumed = _consumed(path, upto)
    # A request the size of the one the recording answered (a few tokens of it are the
    # message's framing), so an input estimate is fair.
    prompt_tokens = usage.input + usage.cached_input + usage.cache_write
    content = " hi" * max(1, prompt_tokens - 6)
    replay = Replay(path.read_bytes(), pause_at=sum(len(r) for r in raws[:upto]))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            async with running_gateway(_config(tmp_path, replay.url, family_dir)) as gw:
                request_id = await _cancel_midway(gw, replay, client, path, content)
                [charge] = [e for e in gw.usage_actor.ledger.entries(request_id) if e["kind"] == "charge"]
            nursery.cancel_scope.cancel()
    worth = cost_micro_usd(consumed, PRICE)[0]
    assert charge["reason"] == "client_cancel" and charge["cost_source"] == "pricing"
    assert charge["provenance"] in ("estimated", "reported_partial") and charge["amount_micro"] < charge["hold_micro"]
    assert worth <= charge["amount_micro"] <= 1.5 * worth, ({k: charge[k] for k in ("input", "output", "reasoning", "amount_micro", "basis") if k in charge}, consumed, worth)
    if consumed.reasoning:
        assert charge["reasoning"] >= consumed.reasoning  # forwarded thinking lands in its own bucket


# ------------------------------------------------------------------ drain


async def test_drain_outlasts_the_stall_timeout_and_settles_the_exact_usage(tmp_path):
    doc = base_config(tmp_path)
    doc["simulator"] = {"tokens_per_second": 20}  # ~1.5 s for the answer below, 50 ms per token
    doc["streaming"] = {"ttfb_timeout_s": 10, "stall_timeout_s": 1, "on_disconnect": "drain",
                        "drain_timeout_s": 30}
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "[[sim tokens=30]] go"}]}
    with trio.fail_after(30):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
                async with http.stream("POST", "/v1/chat/completions", json=body,
                                       headers={"authorization": f"Bearer {DEMO_KEY}"}) as r:
                    assert r.status_code == 200
                    async for _ in r.aiter_raw():
                        break  # the client leaves after the first bytes
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            reported = gw.simulator.reported[-1]
    assert (entry["reason"], entry["provenance"]) == ("client_cancel", "reported")
    assert (entry["input"], entry["output"]) == (reported.input, reported.output) and reported.output == 30
    assert entry["amount_micro"] == cost_micro_usd(reported, Price(input=Decimal("1"), output=Decimal("2")))[0]


# ------------------------------------------------------------------ whole answers


async def _chat_through(tmp_path: Path, replay: Replay, stream: bool) -> tuple[httpx.Response, list]:
    """One Chat call through the gateway to ``replay``: the answer and its ledger entries."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(replay.serve)
            async with running_gateway(_config(tmp_path, replay.url, "openai-chat")) as gw:
                async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                    r = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                        json={"model": "m", "stream": stream,
                                              "messages": [{"role": "user", "content": "hi"}]})
                    records = (await http.get("/admin/usage/records", params={
                        "request_id": r.headers["x-request-id"]}, headers=ADMIN)).json()["records"]
            nursery.cancel_scope.cancel()
    return r, records


async def test_an_unreadable_success_is_charged_an_estimate_and_its_id_finds_it(tmp_path):
    replay = Replay(b'{"id": "chatcmpl-1", "choices": [' + b"x" * 4000, content_type="application/json")
    r, records = await _chat_through(tmp_path, replay, stream=False)
    assert r.status_code == 502 and "not JSON" in r.json()["error"]["message"]
    assert replay.requests == 1  # an answer is not retried elsewhere
    [charge] = [e for e in records if e["kind"] == "charge"]
    assert charge["reason"] == "upstream_error" and charge["cost_source"] == "pricing"
    assert charge["input"] > 0 and charge["output"] >= 1000 and charge["amount_micro"] > 0


@pytest.mark.parametrize("stream", [True, False])
async def test_a_failure_before_the_transport_wrote_a_byte_charges_nothing(tmp_path, stream):
    doc = base_config(tmp_path)
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            provider = gw.runtime.providers["sim"]

            def broken(*args, **kwargs):
                raise ValueError("the request could not be built")  # before any byte is sent

            provider.stream = provider.complete = broken
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                before = (await http.get("/admin/keys", headers=ADMIN)).json()
                r = await http.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                    json={"model": "demo", "stream": stream,
                                          "messages": [{"role": "user", "content": "hi"}]})
                after = (await http.get("/admin/keys", headers=ADMIN)).json()
            entries = gw.ledger_entries()
    assert r.status_code == 500 and r.json()["error"]["type"] and "x-request-id" in r.headers
    assert before == after
    [entry] = entries
    assert (entry["amount_micro"], entry["reason"]) == (0, "gateway_error")
    assert gw.simulator.requests_by_key == {}


DEEP = "[" * 990 + "]" * 990


@pytest.mark.parametrize("client", ["chat", "responses", "anthropic", "gemini"])
@pytest.mark.parametrize("trouble", ["surrogate", "deep"])
async def test_text_that_cannot_be_sent_on_is_refused_before_any_charge(tmp_path, client, trouble):
    url, body, headers = request(client, stream=False)
    raw = json.dumps(body)
    if trouble == "surrogate":
        raw = raw.replace('"hi"', '"h\\ud800i"')
    else:
        raw = raw[:-1] + f', "metadata_x": {DEEP}}}'
    with trio.fail_after(20):
        async with running_gateway(base_config(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                before = (await http.get("/admin/keys", headers=ADMIN)).json()
                r = await http.post(url, content=raw.encode(), headers={**headers, "content-type": "application/json"})
                after = (await http.get("/admin/keys", headers=ADMIN)).json()
            assert gw.ledger_entries() == [] or all(e["amount_micro"] == 0 for e in gw.ledger_entries())
    assert r.status_code == 400, r.text
    assert ("surrogate" if trouble == "surrogate" else "nested too deeply") in r.text
    assert before == after and "x-request-id" in r.headers
    assert gw.simulator.requests_by_key == {}


async def _second_behind_the_one_connection(tmp_path, provider: dict, streaming: dict) -> tuple:
    """A stream holds the upstream's one connection while a second request comes:
    that request's answer, the cooldowns and credentials then, and its ledger records."""
    doc = base_config(tmp_path)
    doc["providers"]["sim"].update(max_connections=1, **provider)
    doc["simulator"] = {"tokens_per_second": 20}
    doc["streaming"] = streaming
    auth = {"authorization": f"Bearer {DEMO_KEY}"}
    long = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "[[sim tokens=200]] go"}]}
    with trio.fail_after(30):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            async with http.stream("POST", "/v1/chat/completions", json=long, headers=auth) as first:
                assert first.status_code == 200  # holds the one connection to the upstream
                second = await http.post("/v1/chat/completions", headers=auth, json={
                    "model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
                cooldowns = (await http.get("/admin/cooldowns", headers=ADMIN)).json()
                credentials = (await http.get("/admin/credentials", headers=ADMIN)).json()
            records = (await http.get("/admin/usage/records", params={
                "request_id": second.headers["x-request-id"]}, headers=ADMIN)).json()["records"]
    return second, cooldowns, credentials, records


async def test_a_deadline_while_waiting_for_a_connection_slot_charges_nothing(tmp_path):
    second, cooldowns, _, records = await _second_behind_the_one_connection(
        tmp_path, {}, {"ttfb_timeout_s": 1, "stall_timeout_s": 30})
    assert second.status_code == 504
    [charge] = records
    assert (charge["amount_micro"], charge["cost_source"], charge["reason"]) == (0, "refused", "timeout")
    assert charge["basis"] == "nothing was sent upstream"
    assert not cooldowns["active"], "the gateway's own queue is not the upstream's fault"


async def test_connection_slots_busy_past_their_wait_are_the_gateways_limit_not_the_upstreams(tmp_path):
    second, cooldowns, credentials, records = await _second_behind_the_one_connection(
        tmp_path, {"connect_timeout_s": 0.3}, {"ttfb_timeout_s": 30, "stall_timeout_s": 30})
    assert second.status_code == 503, second.text
    assert second.json()["error"]["type"] == "overloaded_error" and "busy" in second.json()["error"]["message"]
    [charge] = records
    assert (charge["amount_micro"], charge["cost_source"]) == (0, "refused")
    assert not cooldowns["active"] and not cooldowns["errors"], "the gateway's own limit is not the upstream's fault"
    assert all(c["state"] == "ready" for c in credentials["sim"])


async def test_an_answer_the_gateway_cannot_read_is_charged_an_estimate(tmp_path):
    garbage = b'data: {"choices": {"0": {}}, "usage": {"prompt_tokens": 5, "completion_tokens": 100}}\n\n'
    replay = Replay(garbage * 3)
    r, records = await _chat_through(tmp_path, replay, stream=True)
    assert r.status_code == 500 and r.json()["error"]["message"]
    [charge] = records
    assert charge["reason"] == "gateway_error" and charge["amount_micro"] > 0 and charge["input"] > 0
    assert replay.requests == 1


async def test_a_charge_that_cannot_be_estimated_falls_back_to_the_hold(tmp_path, monkeypatch):
    import gateway.request

    def broken(req):
        raise ValueError("the tokenizer is broken")

    monkeypatch.setattr(gateway.request, "estimate_request_tokens", broken)
    doc = base_config(tmp_path)
    doc["models"]["slow"] = {"targets": ["sim/sim-chat+stall_after=4"]}
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
                async with http.stream("POST", "/v1/chat/completions", json=body,
                                       headers={"authorization": f"Bearer {DEMO_KEY}"}) as r:
                    async for _ in r.aiter_raw():
                        break  # leave mid-stream: the charge must be estimated, and cannot be
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            holds = gw.usage_actor.core.holds
    assert (entry["reason"], entry["cost_source"]) == ("client_cancel", "hold")
    assert entry["amount_micro"] == entry["hold_micro"] and not holds
