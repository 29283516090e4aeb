"""Every client protocol against every upstream protocol, streaming and not.

Four official SDKs (openai chat, openai responses, anthropic, google-genai) talk to
the gateway through a real socket; the gateway reaches the simulator in each of the
four upstream protocols. Each pair must return the simulator's text, complete a tool
round trip, and leave a ledger whose token counts equal what the upstream reported.
"""

from __future__ import annotations

import pytest
import trio

from tests.clients import CLIENTS
from tests.conftest import base_config, running_gateway

SIM_TEXT = "Hello from the Tollhouse simulator. This answer is deterministic and every word"

UPSTREAMS = {
    "chat": ("sim", "openai_chat", "sim-chat"),
    "responses": ("simr", "openai_responses", "sim-gpt"),
    "anthropic": ("sima", "anthropic", "sim-claude"),
    "gemini": ("simg", "gemini", "sim-gemini"),
}


def matrix_config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    for upstream, (provider, protocol, model) in UPSTREAMS.items():
        doc["providers"][provider] = {"family": "simulator", "embedded": True, "protocol": protocol}
        doc["models"][f"to-{upstream}"] = {"targets": [f"{provider}/{model}"]}
        doc["pricing"][f"{provider}/*"] = {"input": "1.00", "output": "2.00"}
    return doc


@pytest.fixture
async def gateway(tmp_path):
    async with running_gateway(matrix_config(tmp_path)) as gw:
        yield gw


def _assert_ledger_matches_upstream(gw, n: int) -> None:
    entries = [e for e in gw.ledger_entries() if e["kind"] == "charge"]
    assert len(entries) == n
    for entry, reported in zip(entries, gw.simulator.reported[-n:]):
        assert (entry["input"], entry["output"], entry["reasoning"]) == (
            reported.input, reported.output, reported.reasoning)
        assert entry["provenance"] == "reported"


PAIRS = [(c, u, s) for c in CLIENTS for u in UPSTREAMS for s in (False, True)]
IDS = [f"{c}-to-{u}-{'stream' if s else 'whole'}" for c, u, s in PAIRS]


@pytest.mark.parametrize("client_name,upstream,stream", PAIRS, ids=IDS)
async def test_text(gateway, client_name, upstream, stream):
    client = CLIENTS[client_name](gateway.url)
    try:
        with trio.fail_after(15):
            assert await client.text(f"to-{upstream}", stream) == SIM_TEXT
            await gateway.usage_actor.wait_settles(1)
    finally:
        await client.aclose()
    _assert_ledger_matches_upstream(gateway, 1)


@pytest.mark.parametrize("client_name,upstream,stream", PAIRS, ids=IDS)
async def test_tool_round_trip(gateway, client_name, upstream, stream):
    client = CLIENTS[client_name](gateway.url)
    try:
        with trio.fail_after(15):
            name, arguments, answer = await client.tool_round_trip(f"to-{upstream}", stream)
            await gateway.usage_actor.wait_settles(2)
    finally:
        await client.aclose()
    assert (name, arguments) == ("get_weather", {"location": "Paris"})
    assert answer.startswith("The tool returned:") and "sunny" in answer
    _assert_ledger_matches_upstream(gateway, 2)
