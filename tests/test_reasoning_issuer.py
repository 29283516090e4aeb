"""A reasoning signature goes only to the protocol that issued it.

Anthropic thinking signatures and redacted data, Gemini ``thoughtSignature`` and
Responses ``encrypted_content`` can be read back only by the vendor that made them; any
other one answers 400. So every builder (requests to an upstream) and every encoder
(answers to a client, whole or streamed) sends a blob only when the part's ``issuer``
is its own protocol, whatever the field cache does. The unit tests here check every
builder and encoder; the gateway tests check it end to end with the cache off, through
the simulator, which refuses what it did not sign as the real APIs do.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
import trio
import trio.testing

from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.unified import (
    Finish,
    FinishReason,
    Message,
    ReasoningDelta,
    ReasoningPart,
    StreamStart,
    TextDelta,
    TextPart,
    UnifiedRequest,
    UnifiedResponse,
)
from providers.sim_script import Fault
from tests.conftest import DEMO_KEY, base_config, running_gateway

BLOB = "opaque-blob-of-the-issuer"
SIGNATURE = "signature-of-the-issuer"
PROTOCOLS = ("anthropic", "gemini", "openai_responses", "openai_chat")
MODULES = {"anthropic": anthropic_messages, "gemini": gemini, "openai_responses": openai_responses,
           "openai_chat": openai_chat}


def _request(protocol: str, parts: tuple, stream: bool = False) -> UnifiedRequest:
    return UnifiedRequest(protocol=protocol, model="m", stream=stream, max_tokens=100, messages=(
        Message("user", (TextPart("hi"),)),
        Message("assistant", (*parts, TextPart("hello"))),
        Message("user", (TextPart("again"),))))


def _parts(issuer: str) -> tuple:
    """Reasoning as ``issuer``'s upstream gives it: a signed thought, a redacted blob."""
    extra = {"id": "rs_1"} if issuer == "openai_responses" else {}
    return (ReasoningPart(text="a thought", signature=SIGNATURE, issuer=issuer, extra=extra),
            ReasoningPart(redacted=BLOB, issuer=issuer, extra=extra))


def _build(protocol: str, req: UnifiedRequest) -> str:
    kwargs = {"include_usage": False} if protocol == "openai_chat" else {}
    return json.dumps(MODULES[protocol].build_request(req, "m", **kwargs))


def _encode(protocol: str, issuer: str) -> str:
    client = _request("other", (), stream=True)
    encoder = MODULES[protocol].StreamEncoder(client, "m")
    data = encoder.encode([StreamStart("r1", "m"), ReasoningDelta(text="a thought", issuer=issuer),
                           ReasoningDelta(signature=SIGNATURE, issuer=issuer),
                           ReasoningDelta(redacted=BLOB, issuer=issuer, item_id="rs_1"),
                           TextDelta("hello"), Finish(FinishReason.STOP)]) + encoder.close()
    return data.decode()


def _format(protocol: str, issuer: str) -> str:
    response = UnifiedResponse("r1", "m", (*_parts(issuer), TextPart("hello")))
    return json.dumps(MODULES[protocol].format_response(response, "m", request=_request("other", ())))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("issuer", PROTOCOLS + (None,))
def test_no_builder_sends_another_vendors_blob(protocol, issuer):
    if issuer == protocol:
        return  # below: the issuer's own
    body = _build(protocol, _request("other", _parts(issuer)))
    assert SIGNATURE not in body and BLOB not in body


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("issuer", PROTOCOLS + (None,))
def test_no_encoder_shows_a_client_another_vendors_blob(protocol, issuer):
    if issuer == protocol:
        return
    for shown in (_encode(protocol, issuer), _format(protocol, issuer)):
        assert SIGNATURE not in shown and BLOB not in shown
        assert "a thought" in shown  # the reasoning text still shows


def test_the_issuer_gets_its_own_blobs_back():
    anthropic_body = json.loads(_build("anthropic", _request("other", _parts("anthropic"))))
    assert anthropic_body["messages"][1]["content"][:2] == [
        {"type": "thinking", "thinking": "a thought", "signature": SIGNATURE},
        {"type": "redacted_thinking", "data": BLOB}]
    responses_body = json.loads(_build("openai_responses", _request("other", _parts("openai_responses"))))
    assert any(item.get("encrypted_content") == BLOB for item in responses_body["input"])
    for protocol in ("anthropic", "gemini", "openai_responses"):
        shown = _encode(protocol, protocol) + _format(protocol, protocol)
        assert (SIGNATURE if protocol != "openai_responses" else BLOB) in shown


def test_foreign_thinking_reaches_an_anthropic_client_with_an_empty_signature():
    doc = json.loads(_format("anthropic", "gemini"))
    assert doc["content"][0] == {"type": "thinking", "thinking": "a thought", "signature": ""}
    stream = _encode("anthropic", "openai_responses")
    assert '"signature_delta"' not in stream and "redacted_thinking" not in stream


def test_what_a_client_sends_back_is_its_own_protocols():
    """A client's blobs are taken as issued by its own protocol's upstream: that is the
    only place the gateway lets them come from."""
    anthropic_req = anthropic_messages.parse_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]}]})
    assert anthropic_req.messages[1].parts[0].issuer == "anthropic"
    gemini_req = gemini.parse_request({"contents": [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "t", "thought": True, "thoughtSignature": "g"}]}]},
        model="m", stream=False, sse=False)
    assert gemini_req.messages[1].parts[0].issuer == "gemini"
    responses_req = openai_responses.parse_request({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"}]})
    assert responses_req.messages[1].parts[0].issuer == "openai_responses"


# ---------------------------------------------------------------- through the gateway, the cache off


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.3)


def _config(tmp_path, targets):
    doc = base_config(tmp_path)
    doc["providers"] = {
        "claude": {"family": "simulator", "embedded": True, "protocol": "anthropic",
                   "credentials": [{"id": "c", "key": "kc"}]},
        "gem": {"family": "simulator", "embedded": True, "protocol": "gemini",
                "credentials": [{"id": "g", "key": "kg"}]},
    }
    doc["models"] = {"m": {"targets": targets}}
    doc["pricing"] = {"claude/*": {"input": "1.00", "output": "2.00"}, "gem/*": {"input": "1.00", "output": "2.00"}}
    doc["streaming"] = {"ttfb_timeout_s": 600, "stall_timeout_s": 600}
    doc["cooldown"] = {"base_s": 5, "max_s": 60, "jitter": 0}
    doc["field_cache"] = {"enabled": False}
    return doc


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_an_anthropic_client_never_holds_a_gemini_signature(tmp_path, clock, stream):
    with trio.fail_after(120):
        async with running_gateway(_config(tmp_path, ["gem/gemini-2.5-sim"])) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            try:
                kwargs = dict(model="m", max_tokens=4096, messages=[{"role": "user", "content": "hello"}],
                              thinking={"type": "enabled", "budget_tokens": 2048})
                if stream:
                    async with sdk.messages.stream(**kwargs) as s:
                        reply = await s.get_final_message()
                else:
                    reply = await sdk.messages.create(**kwargs)
            finally:
                await sdk.close()
            thinking = [b for b in reply.content if b.type == "thinking"]
            assert thinking and all(b.signature == "" for b in thinking)
            assert not any(b.type == "redacted_thinking" for b in reply.content)


async def test_a_gemini_clients_signature_never_reaches_an_anthropic_upstream(tmp_path, clock):
    """A Gemini client keeps the signatures its Gemini upstream gave; when the route
    falls back to Anthropic they are left out (before, Anthropic answered 400)."""
    with trio.fail_after(120):
        async with running_gateway(_config(tmp_path, ["gem/gemini-2.5-sim", "claude/claude-sim"])) as gw:
            url = f"{gw.url}/v1beta/models/m:generateContent"
            headers = {"x-goog-api-key": DEMO_KEY}
            thinking = {"thinkingConfig": {"thinkingBudget": 2048}}
            contents = [{"role": "user", "parts": [{"text": "hello"}]}]
            async with httpx.AsyncClient(timeout=60) as client:
                first = await client.post(url, headers=headers, json={"contents": contents,
                                                                      "generationConfig": thinking})
                assert first.status_code == 200, first.text
                parts = first.json()["candidates"][0]["content"]["parts"]
                signature = next(p["thoughtSignature"] for p in parts if "thoughtSignature" in p)
                contents += [{"role": "model", "parts": parts}, {"role": "user", "parts": [{"text": "more"}]}]
                gw.simulator.key_faults["kg"] = Fault(status=503)
                mark = len(gw.simulator.bodies)
                second = await client.post(url, headers=headers, json={"contents": contents,
                                                                       "generationConfig": thinking})
            assert second.status_code == 200, second.text
            assert second.headers["x-tollhouse-target"] == "claude/claude-sim"
            to_anthropic = [b for b in gw.simulator.bodies[mark:] if "messages" in b]
            assert to_anthropic and signature not in json.dumps(to_anthropic)


async def test_a_responses_clients_encrypted_content_never_reaches_an_anthropic_upstream(tmp_path, clock):
    with trio.fail_after(120):
        async with running_gateway(_config(tmp_path, ["claude/claude-sim"])) as gw:
            body = {"model": "m", "input": [
                {"role": "user", "content": "hello"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-responses-blob"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "more"}],
                    "reasoning": {"effort": "low"}}
            async with httpx.AsyncClient(timeout=60) as client:
                answer = await client.post(f"{gw.url}/v1/responses", json=body,
                                           headers={"authorization": f"Bearer {DEMO_KEY}"})
            assert answer.status_code == 200, answer.text
            assert "gAAAA-responses-blob" not in json.dumps(gw.simulator.bodies[-1])
