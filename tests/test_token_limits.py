"""Token limits a client sends cannot mint money: every front door, through real sockets.

A limit prices the credit hold. A negative one once made a negative hold that was
settled as-is and gave a $5 key $600 of credit, so each bad limit must be a 400 in
the client's own error shape, leave the key's balance exactly as it was, and never
show a negative hold; a large but valid limit is served with a hold capped at the
model's output allowance.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HI = [{"role": "user", "content": "hi"}]
HOLD_OUTPUT_TOKENS = 4096


def chat(field: str):
    return lambda limit: {"model": "demo", "messages": HI, field: limit}


def responses(limit):
    return {"model": "demo", "input": "hi", "max_output_tokens": limit}


def anthropic(limit):
    return {"model": "demo", "max_tokens": limit, "messages": HI}


def anthropic_thinking(budget):
    return {"model": "demo", "max_tokens": 4096, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": budget}}


def gemini(limit):
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": limit}}


def gemini_thinking(budget):
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": budget}}}


CHAT = ("/v1/chat/completions", {"authorization": f"Bearer {DEMO_KEY}"})
RESPONSES = ("/v1/responses", {"authorization": f"Bearer {DEMO_KEY}"})
ANTHROPIC = ("/v1/messages", {"x-api-key": DEMO_KEY})
GEMINI = ("/v1beta/models/demo:generateContent", {"x-goog-api-key": DEMO_KEY})

# (door, body for a limit, the field's path, limits refused, limits served)
DOORS = {
    "chat max_tokens": (CHAT, chat("max_tokens"), "max_tokens",
                        [-1, 0, 0.5, 5.0, "5", True, -(10**30), 10**30], [1, 10**9]),
    "chat max_completion_tokens": (CHAT, chat("max_completion_tokens"), "max_completion_tokens",
                                   [-5, 0, 2.5, "100", False, 2**31], [1, 2**31 - 1]),
    "responses max_output_tokens": (RESPONSES, responses, "max_output_tokens",
                                    [-1, 0, 15, 16.5, 100.0, "100", True, 10**30], [16, 10**9]),
    "anthropic max_tokens": (ANTHROPIC, anthropic, "max_tokens",
                             [-1, 0, 0.5, 5.0, "5", True, 10**30], [1, 10**9]),
    "anthropic thinking.budget_tokens": (ANTHROPIC, anthropic_thinking, "thinking.budget_tokens",
                                         [-1, 0, 1023, 2048.5, "2048", None, 10**30], [1024, 10**9]),
    "gemini maxOutputTokens": (GEMINI, gemini, "generationConfig.maxOutputTokens",
                               [-1, 0, 0.5, True, "abc", "1.5", 1e30, 10**30, 2**31], [1, 5.0, "7", 10**9]),
    "gemini thinkingBudget": (GEMINI, gemini_thinking, "generationConfig.thinkingConfig.thinkingBudget",
                              [-2, -(10**30), 0.5, True, "x", 10**30], [-1, 0, 1024, "2048"]),
}


def error_text(door: tuple, body: dict) -> str:
    """The error message in the door's protocol shape (asserting the shape on the way)."""
    path = door[0]
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        return body["error"]["message"]
    if path.startswith("/v1beta"):
        assert body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        return body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return f"{body['error']['message']} [{body['error']['param']}]"


async def key_view(client: httpx.AsyncClient) -> dict:
    keys = (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]
    [view] = [k for k in keys if k["name"] == "test"]
    return view


@pytest.mark.parametrize("name", sorted(DOORS))
async def test_bad_token_limits_are_refused_and_change_no_balance(tmp_path, name):
    door, make, field_path, refused, _ = DOORS[name]
    with trio.fail_after(30):
        async with running_gateway(base_config(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                before = await key_view(client)
                for limit in refused:
                    for stream in (False, True):
                        body = make(limit)
                        if door is not GEMINI:
                            body["stream"] = stream
                        r = await client.post(door[0], json=body, headers=door[1])
                        assert r.status_code == 400, (limit, r.text)
                        assert field_path in error_text(door, r.json()), (limit, r.text)
                        after = await key_view(client)
                        assert after == before, f"{limit!r} changed the key: {after}"
                        assert not after["held_usd"].startswith("-")
                assert (await client.get("/admin/reservations", headers=ADMIN)).json()["reservations"] == []
            assert gw.ledger_entries() == []


@pytest.mark.parametrize("name", sorted(DOORS))
async def test_large_valid_token_limits_are_served_within_the_output_allowance(tmp_path, name):
    door, make, _, _, served = DOORS[name]
    doc = base_config(tmp_path)
    doc["default_hold_output_tokens"] = HOLD_OUTPUT_TOKENS
    with trio.fail_after(30):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                for limit in served:
                    r = await client.post(door[0], json=make(limit), headers=door[1])
                    assert r.status_code == 200, (limit, r.text)
                await gw.usage_actor.wait_settles(len(served))
                view = await key_view(client)
            entries = [e for e in gw.ledger_entries() if e["kind"] == "charge"]
    assert len(entries) == len(served)
    # $1/M input and $2/M output: a hold never exceeds the input plus the allowance.
    ceiling = 2 * HOLD_OUTPUT_TOKENS + 1_000
    for entry in entries:
        assert 0 < entry["hold_micro"] <= ceiling, entry
        assert entry["amount_micro"] >= 0
    assert view["held_usd"] == "0.000000" and not view["spent_usd"].startswith("-")
