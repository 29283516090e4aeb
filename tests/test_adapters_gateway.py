"""Adapters end to end: a gateway in front of a raw upstream that captures what it is
sent. The README's vendor (wants ``max_completion_tokens``, answers 400 to ``top_p``
and to ``max_tokens``) serves clients of every protocol with that config alone; a
pass-through stream stays byte-identical when only request adapters apply; an answer
adapter re-encodes its own target's answers and no other's."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import httpx
import pytest
import trio

from providers.adapters import ProviderAdapters
from providers.adapters.request import DropParams, SystemPrefix
from providers.responses_socket import SocketSession
from tests.conftest import DEMO_KEY, FIXTURES, base_config, running_gateway
from tests.test_responses_socket import CREDENTIAL, provider_on_simulator, read_turn
from tests.test_responses_socket import request as socket_request
from tests.raw_upstream import RawUpstream

ROOT = Path(__file__).resolve().parent.parent
CHAT_AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ANTHROPIC_AUTH = {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"}
GEMINI_AUTH = {"x-goog-api-key": DEMO_KEY}
UPSTREAM_KEY = "sk-acme-upstream-secret"


def readme_vendor() -> dict:
    """The provider the README's "Adapters" section shows, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adapters"):]
    return json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))["providers"]["acme"]


def _rejection(param: str) -> tuple[int, bytes]:
    """OpenAI's own words for a parameter a model does not take."""
    return 400, json.dumps({"error": {
        "message": f"Unsupported parameter: '{param}' is not supported with this model.",
        "type": "invalid_request_error", "param": param, "code": "unsupported_parameter"}}).encode()


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    doc = {"id": "chatcmpl-acme", "object": "chat.completion.chunk", "created": 1700000000, "model": "acme-1",
           "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        doc["usage"] = usage
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


STREAM = b"".join([
    _chunk({"role": "assistant", "reasoning_content": "pondering the question"}),
    _chunk({"content": "hello"}),
    _chunk({}, "stop"),
    _chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}),
    b"data: [DONE]\n\n",
])
WHOLE = json.dumps({
    "id": "chatcmpl-acme", "object": "chat.completion", "created": 1700000000, "model": "acme-1",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "hello", "reasoning_content": "pondering the question"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}).encode()


def vendor(_conn: int, _n: int, body: bytes):
    """A Chat Completions vendor that refuses ``top_p`` and ``max_tokens`` as such vendors do."""
    doc = json.loads(body)
    for param in ("top_p", "max_tokens"):
        if param in doc:
            return _rejection(param)
    if doc.get("stream"):
        return 200, STREAM, "text/event-stream"
    return 200, WHOLE


def _config(tmp_path, upstream: RawUpstream, **providers: dict) -> dict:
    doc = base_config(tmp_path)
    for p in providers.values():
        p["base_url"] = f"{upstream.url}/v1"
        p["credentials"] = [{"id": "acme-1", "key": UPSTREAM_KEY}]
    doc["providers"] = providers
    first = next(iter(providers))
    doc["models"] = {"acme": {"targets": [f"{first}/acme-1"]}, "*": {"targets": [f"{first}/acme-1"]}}
    doc["models"].update({name: {"targets": [f"{name}/acme-1"]} for name in providers})
    doc["pricing"] = {f"{name}/*": {"input": "1.00", "output": "2.00"} for name in providers}
    return doc


def _sent(upstream: RawUpstream) -> dict:
    return json.loads(upstream.bodies[-1])


async def _serve(upstream: RawUpstream, nursery: trio.Nursery) -> None:
    await nursery.start(upstream.serve)


async def test_the_readme_vendor_is_config_for_clients_of_every_protocol(tmp_path):
    upstream = RawUpstream(vendor)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serve(upstream, nursery)
            bare = {k: v for k, v in readme_vendor().items() if k not in ("adapters", "model_adapters")}
            doc = _config(tmp_path, upstream, acme=readme_vendor(), bare=bare)
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "temperature": 0.2,
                       "top_p": 0.9}
                # without the adapters, the vendor refuses what a Chat client sends
                r = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={"model": "bare", **ask})
                assert r.status_code == 400 and "top_p" in r.json()["error"]["message"]

                r = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={"model": "acme", **ask})
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello"
                sent = _sent(upstream)
                assert sent["max_completion_tokens"] == 50 and sent["temperature"] == 0.2
                assert "max_tokens" not in sent and "top_p" not in sent

                r = await client.post("/v1/messages", headers=ANTHROPIC_AUTH, json={"model": "acme", **ask})
                assert r.status_code == 200 and r.json()["content"][-1] == {"type": "text", "text": "hello"}
                sent = _sent(upstream)
                assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent and "top_p" not in sent

                r = await client.post("/v1beta/models/acme:generateContent", headers=GEMINI_AUTH, json={
                    "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                    "generationConfig": {"maxOutputTokens": 50, "topP": 0.9}})
                assert r.status_code == 200
                sent = _sent(upstream)
                assert sent["max_completion_tokens"] == 50 and "top_p" not in sent

                r = await client.post("/v1/responses", headers=CHAT_AUTH, json={
                    "model": "acme", "input": "hi", "max_output_tokens": 50, "top_p": 0.5})
                assert r.status_code == 200 and r.json()["output"][-1]["content"][0]["text"] == "hello"
                assert "top_p" not in _sent(upstream)

                # the per-model entry: acme-reasoner* models are capped, the others are not
                r = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                    "model": "acme/acme-reasoner-2", **ask, "max_tokens": 100000})
                assert r.status_code == 200 and _sent(upstream)["max_completion_tokens"] == 32000
                r = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                    "model": "acme/acme-1", **ask, "max_tokens": 100000})
                assert r.status_code == 200 and _sent(upstream)["max_completion_tokens"] == 100000
                assert all(e["output"] == 4 for e in gw.ledger_entries() if e.get("provider") == "acme")
            nursery.cancel_scope.cancel()


async def test_request_adapters_keep_a_pass_through_stream_byte_identical(tmp_path):
    upstream = RawUpstream(vendor)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serve(upstream, nursery)
            acme = readme_vendor()
            acme["adapters"] = [*acme["adapters"], {"name": "extra_headers", "headers": {"X-Acme-Beta": "tools-2"}},
                                {"name": "system_prefix", "text": "Answer in English."}]
            async with running_gateway(_config(tmp_path, upstream, acme=acme)) as gw, \
                    httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                body = {"model": "acme", "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "top_p": 0.3}
                async with client.stream("POST", "/v1/chat/completions", headers=CHAT_AUTH, json=body) as r:
                    assert r.status_code == 200
                    got = b"".join([chunk async for chunk in r.aiter_raw()])
                assert got == STREAM  # the upstream's bytes, as sent
                sent = _sent(upstream)
                assert sent["max_completion_tokens"] == 20 and "top_p" not in sent
                assert sent["messages"][0] == {"role": "system", "content": "Answer in English."}
                target, headers = upstream.heads[-1]
                assert target == "/v1/chat/completions"
                assert headers["x-acme-beta"] == "tools-2" and headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
            nursery.cancel_scope.cancel()


async def test_an_answer_adapter_reencodes_its_own_targets_answers_only(tmp_path):
    upstream = RawUpstream(vendor)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serve(upstream, nursery)
            acme = readme_vendor()
            quiet = copy.deepcopy(acme)
            quiet["adapters"].append("strip_reasoning")
            async with running_gateway(_config(tmp_path, upstream, acme=acme, quiet=quiet)) as gw, \
                    httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                streams = {}
                for model in ("acme", "quiet"):
                    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "hi"}]}
                    async with client.stream("POST", "/v1/chat/completions", headers=CHAT_AUTH, json=body) as r:
                        assert r.status_code == 200
                        streams[model] = b"".join([chunk async for chunk in r.aiter_raw()])
                assert streams["acme"] == STREAM
                assert b"pondering" not in streams["quiet"] and b'"hello"' in streams["quiet"]
                assert streams["quiet"].endswith(b"data: [DONE]\n\n")

                whole = {"model": "quiet", "messages": [{"role": "user", "content": "hi"}]}
                message = (await client.post("/v1/chat/completions", headers=CHAT_AUTH, json=whole)).json()
                assert message["choices"][0]["message"]["content"] == "hello"
                assert "reasoning_content" not in message["choices"][0]["message"]
                plain = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={**whole, "model": "acme"})
                assert plain.content == WHOLE
                # what the client does not see is still what the upstream reported
                assert [(e["provider"], e["output"]) for e in gw.ledger_entries()] == [
                    ("acme", 4), ("quiet", 4), ("quiet", 4), ("acme", 4)]
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- each adapter, through a gateway

ASKED = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9}


def anything(_conn: int, _n: int, body: bytes):
    """A Chat upstream that accepts whatever it is sent (the captured body is the test's)."""
    return 200, WHOLE


@pytest.mark.parametrize("adapter, asked, check", [
    ("one_sampling_param", {}, lambda s: s["temperature"] == 0.2 and "top_p" not in s),
    ({"name": "one_sampling_param", "keep": "top_p"}, {}, lambda s: s["top_p"] == 0.9 and "temperature" not in s),
    ({"name": "default_max_tokens", "value": 333}, {}, lambda s: s["max_tokens"] == 333),
    ({"name": "default_max_tokens", "value": 333}, {"max_tokens": 40}, lambda s: s["max_tokens"] == 40),
    ({"name": "cap_max_tokens", "value": 10}, {"max_tokens": 40}, lambda s: s["max_tokens"] == 10),
    ("max_completion_tokens", {"max_tokens": 40}, lambda s: s["max_completion_tokens"] == 40 and "max_tokens" not in s),
    ({"name": "rename_params", "params": {"top_p": "nucleus"}}, {}, lambda s: s["nucleus"] == 0.9 and "top_p" not in s),
    ({"name": "drop_params", "params": ["temperature"]}, {}, lambda s: "temperature" not in s and s["top_p"] == 0.9),
    ({"name": "system_prefix", "text": "Be exact."}, {},
     lambda s: s["messages"][0] == {"role": "system", "content": "Be exact."} and len(s["messages"]) == 2),
])
@pytest.mark.parametrize("door", ["chat", "responses"])
async def test_each_request_adapter_reaches_the_upstream(tmp_path, adapter, asked, check, door):
    """A Chat client (its own body, passed through) and a Responses client (translated):
    the upstream gets the adapter's edit either way."""
    upstream = RawUpstream(anything)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serve(upstream, nursery)
            acme = {"family": "openai_compat", "adapters": [adapter]}
            async with running_gateway(_config(tmp_path, upstream, acme=acme)) as gw, \
                    httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                if door == "chat":
                    r = await client.post("/v1/chat/completions", headers=CHAT_AUTH,
                                          json={"model": "acme", **ASKED, **asked})
                else:
                    limit = {"max_output_tokens": asked["max_tokens"]} if "max_tokens" in asked else {}
                    r = await client.post("/v1/responses", headers=CHAT_AUTH, json={
                        "model": "acme", "input": "hi", "temperature": 0.2, "top_p": 0.9, **limit})
                assert r.status_code == 200, r.text
                assert check(_sent(upstream)), _sent(upstream)
            nursery.cancel_scope.cancel()


def anthropic_message(_conn: int, _n: int, body: bytes):
    return 200, (FIXTURES / "anthropic" / "message-nonstream.json").read_bytes()


async def test_the_anthropic_familys_default_limit_and_a_models_own(tmp_path):
    upstream = RawUpstream(anthropic_message)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await _serve(upstream, nursery)
            claude = {"family": "anthropic", "model_adapters": {
                "claude-3-haiku*": [{"name": "default_max_tokens", "value": 4096}]}}
            doc = _config(tmp_path, upstream, claude=claude)
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                sent = []
                for model, asked in (("claude/claude-sonnet-4-5", {}), ("claude/claude-3-haiku-20240307", {}),
                                     ("claude/claude-3-haiku-20240307", {"max_tokens": 50})):
                    r = await client.post("/v1/chat/completions", headers=CHAT_AUTH, json={
                        "model": model, "messages": [{"role": "user", "content": "hi"}], **asked})
                    assert r.status_code == 200, r.text
                    sent.append(_sent(upstream)["max_tokens"])
                assert sent == [8192, 4096, 50]
                assert upstream.heads[-1][1]["x-api-key"] == UPSTREAM_KEY
            nursery.cancel_scope.cancel()


async def test_request_adapters_edit_a_turn_sent_over_the_upstreams_websocket():
    adapters = ProviderAdapters("openai_responses", (SystemPrefix(text="Be exact."),
                                                     DropParams(params=("top_p",))))
    async with provider_on_simulator(adapters=adapters) as (sim, provider):
        with trio.fail_after(5):
            async with SocketSession.open():
                async with provider.stream(socket_request(top_p=0.5), "sim-up", CREDENTIAL) as reader:
                    await read_turn(reader)
    [sent] = sim.bodies
    assert sent["type"] == "response.create" and sim.websocket_connections == 1
    assert sent["instructions"] == "Be exact." and "top_p" not in sent
