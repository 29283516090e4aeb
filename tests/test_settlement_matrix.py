"""Exactly one settlement, with the right amount and provenance, however a call ends.

Every client protocol, streaming and not, same protocol upstream (bytes forwarded) and
a translated one, against every way a request can end: a normal end; the client
leaving before and after the final usage event; an upstream error mid-stream; a
time-to-first-byte timeout; a stall; a stream without usage; an upstream refusal.
"""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
import trio
import trio.testing

from protocols.money import Price, cost_micro_usd
from tests.conftest import DEMO_KEY, base_config, running_gateway

PRICE = Price(input=Decimal("1"), output=Decimal("2"))
UPSTREAM = {  # protocol -> (provider, simulated model)
    "chat": ("sim", "sim-chat"),
    "responses": ("simr", "sim-gpt"),
    "anthropic": ("sima", "sim-claude"),
    "gemini": ("simg", "sim-gemini"),
}
PROTOCOL_NAMES = {"chat": "openai_chat", "responses": "openai_responses", "anthropic": "anthropic", "gemini": "gemini"}
TRANSLATED = {"chat": "anthropic", "responses": "chat", "anthropic": "chat", "gemini": "chat"}
EARLY_USAGE = {"anthropic", "gemini"}  # upstreams that report input usage when the stream starts


def request(protocol: str, stream: bool) -> tuple[str, dict, dict]:
    """(path, body, headers) for a minimal call of ``protocol`` to the model ``m``."""
    hi = [{"role": "user", "content": "hi"}]
    if protocol == "chat":
        return "/v1/chat/completions", {"model": "m", "messages": hi, "stream": stream}, \
            {"authorization": f"Bearer {DEMO_KEY}"}
    if protocol == "responses":
        return "/v1/responses", {"model": "m", "input": "hi", "stream": stream}, \
            {"authorization": f"Bearer {DEMO_KEY}"}
    if protocol == "anthropic":
        return "/v1/messages", {"model": "m", "max_tokens": 200, "messages": hi, "stream": stream}, \
            {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"}
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/m:{method}", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, \
        {"x-goog-api-key": DEMO_KEY}


def config(tmp_path, upstream: str, fault: str, ttfb_s: float, stall_s: float) -> dict:
    doc = base_config(tmp_path)
    for name, (provider, _) in UPSTREAM.items():
        doc["providers"][provider] = {"family": "simulator", "embedded": True, "protocol": PROTOCOL_NAMES[name]}
        doc["pricing"][f"{provider}/*"] = {"input": "1", "output": "2"}
    provider, model = UPSTREAM[upstream]
    doc["models"]["m"] = {"targets": [f"{provider}/{model}{'+' + fault if fault else ''}"]}
    doc["streaming"] = {"ttfb_timeout_s": ttfb_s, "stall_timeout_s": stall_s, "nonstream_timeout_s": ttfb_s}
    doc["default_hold_output_tokens"] = 200
    return doc


# ending -> (fault, stream variants, client leaves?, reason, provenance rule)
ENDINGS = {
    "end": ("", (False, True), None, "end", "reported"),
    "no_usage": ("no_usage=1", (False, True), None, "end", "estimated"),
    "cancel_before_usage": ("stall_after=4", (True,), "early", "client_cancel", "partial"),
    "cancel_waiting": ("ttfb_stall=30", (False,), "waiting", "client_cancel", "estimated"),
    "cancel_after_usage": ("hold_open=1", (True,), "after_usage", "client_cancel", "reported"),
    "error_mid_stream": ("error_after=4", (True,), None, "upstream_error", "partial"),
    "ttfb_timeout": ("ttfb_stall=30", (False, True), None, "timeout", "estimated"),
    "stall": ("stall_after=5", (True,), None, "timeout", "partial"),
    "refused": ("status=500", (False, True), None, "upstream_error", "refused"),
}

CASES = [
    (client, pairing, ending, stream)
    for client in UPSTREAM
    for pairing in ("same", "translated")
    for ending, (_, streams, *_rest) in ENDINGS.items()
    for stream in streams
    # Anthropic always reports usage: "no usage at all" is not a state it can be in.
    if not (ending == "no_usage" and (client if pairing == "same" else TRANSLATED[client]) == "anthropic")
]


async def _call(gw, client: str, stream: bool, leave: str | None) -> None:
    path, body, headers = request(client, stream)
    async with httpx.AsyncClient(base_url=gw.url, timeout=None) as http:
        if leave is None:
            await http.post(path, json=body, headers=headers)
        elif leave == "waiting":
            with trio.move_on_after(30) as scope:
                async with trio.open_nursery() as nursery:
                    async def post() -> None:
                        await http.post(path, json=body, headers=headers)

                    nursery.start_soon(post)
                    await gw.simulator.wait_requests(1)
                    await trio.testing.wait_all_tasks_blocked(0.05)
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
        else:
            async with http.stream("POST", path, json=body, headers=headers) as r:
                assert r.status_code == 200  # the stream began; leaving the block hangs up
                if leave == "after_usage":
                    await gw.simulator.wait_streams_sent(1)
                    await trio.testing.wait_all_tasks_blocked(0.05)


@pytest.mark.parametrize("client,pairing,ending,stream", CASES,
                         ids=[f"{c}-{p}-{e}-{'stream' if s else 'whole'}" for c, p, e, s in CASES])
async def test_exactly_one_settlement(tmp_path, client, pairing, ending, stream):
    upstream = client if pairing == "same" else TRANSLATED[client]
    fault, _, leave, reason, provenance = ENDINGS[ending]
    # A short deadline only for the deadline the ending is about (the simulator's faults
    # stall for 30 s): a slow machine must not turn one ending into another.
    ttfb_s = 1.0 if ending == "ttfb_timeout" else 10.0
    stall_s = 1.0 if ending == "stall" else 10.0
    with trio.fail_after(30):
        async with running_gateway(config(tmp_path, upstream, fault, ttfb_s, stall_s)) as gw:
            await _call(gw, client, stream, leave)
            await gw.usage_actor.wait_settles(1)
            await gw.simulator.wait_idle()
            entries = gw.ledger_entries()
            reservations = gw.usage_actor.core.holds
    charges = [e for e in entries if e["kind"] == "charge"]
    assert len(charges) == 1 and not reservations
    [entry] = charges
    if ending == "cancel_after_usage" and upstream != "gemini":
        # The upstream sent its protocol's closing event and keeps the connection open: the
        # answer is complete at once, before the client leaves. (Gemini has no closing
        # event: the gateway waits a moment for the end of the body, and the client leaves.)
        reason = "end"
    assert entry["reason"] == reason
    hold = entry["hold_micro"]
    assert hold > 0
    if provenance == "partial":
        # A cut stream is charged what it consumed, never its whole hold: the input (reported
        # when the upstream sent it as the stream started -- Anthropic, Gemini -- else
        # estimated) plus the output forwarded so far. A Responses upstream's failure event
        # may carry usage too.
        expected = {"reported_partial"} if upstream in EARLY_USAGE else {"estimated", "reported_partial"}
        assert entry["provenance"] in expected and entry["cost_source"] == "pricing"
        assert 0 < entry["input"] and 0 < entry["output"] and 0 < entry["amount_micro"] < hold
    elif provenance == "refused":
        assert (entry["provenance"], entry["amount_micro"], entry["cost_source"]) == ("estimated", 0, "refused")
    elif provenance == "estimated":
        assert (entry["provenance"], entry["amount_micro"], entry["cost_source"]) == ("estimated", hold, "hold")
    else:
        reported = gw.simulator.reported[-1]
        assert entry["provenance"] == "reported"
        assert (entry["input"], entry["output"]) == (reported.input, reported.output)
        assert entry["amount_micro"] == cost_micro_usd(reported, PRICE)[0]
