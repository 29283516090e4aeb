"""The credit hold covers the output limit each target is actually sent.

A request without a limit of its own is sent its target's ``default_max_tokens``
(8192 for the Anthropic family, whatever the config sets per provider or model, capped by
``cap_max_tokens``). Holding less than that books an overrun on every long answer, so
the hold's output allowance is the largest limit a target of the plan is sent; a target
sent none counts as ``default_hold_output_tokens``.
"""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from actors.routing import Plan, Target
from gateway.allowance import held_output_tokens
from gateway.config import parse_config
from providers.adapters import ProviderAdapters
from protocols import openai_chat
from protocols.unified import Reasoning
from tests.conftest import DEMO_KEY, base_config, running_gateway

HOLD = 4096
PRICE = {"input": "1.00", "output": "1.00"}  # one micro-USD a token


def _config(tmp_path, **claude):
    doc = base_config(tmp_path)
    doc["providers"] = {
        "claude": {"family": "simulator", "embedded": True, "protocol": "anthropic", **claude},
        "chat": {"family": "simulator", "embedded": True, "protocol": "openai_chat"},
    }
    doc["models"] = {"long": {"targets": ["claude/claude-sim"]}, "chat-first": {"targets": ["chat/c", "claude/claude-sim"]},
                     "chat-only": {"targets": ["chat/c"]},
                     "fixed": {"targets": ["claude/claude-sim"], "hold_output_tokens": 1000}}
    doc["pricing"] = {"claude/*": PRICE, "chat/*": PRICE}
    doc["default_hold_output_tokens"] = HOLD
    doc["streaming"] = {"ttfb_timeout_s": 60, "stall_timeout_s": 60}
    return doc


@attrs.frozen
class Upstream:
    protocol: str
    adapters: ProviderAdapters


def _request(model: str, **fields):
    return openai_chat.parse_request({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_long_answer_without_a_client_limit_stays_within_its_hold(tmp_path, stream):
    with trio.fail_after(120):
        async with running_gateway(_config(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
                r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                      json={"model": "long", "stream": stream,
                                            "messages": [{"role": "user", "content": "tell me [[sim tokens=6000]]"}]})
                assert r.status_code == 200, r.text
                await gw.usage_actor.wait_settles(1)
            entries = gw.ledger_entries()
            sent = gw.simulator.bodies[-1]
    assert sent["max_tokens"] == 8192  # what the Anthropic family's adapter sends
    assert [e["kind"] for e in entries] == ["charge"], "no overrun booked"
    [charge] = entries
    assert charge["output"] >= 6000
    assert charge["hold_micro"] >= 8192 and charge["amount_micro"] <= charge["hold_micro"]


def test_the_allowance_is_the_largest_limit_a_target_is_sent(tmp_path):
    doc = _config(tmp_path, model_adapters={"claude-capped*": [{"name": "cap_max_tokens", "value": 5000}],
                                            "claude-big": [{"name": "default_max_tokens", "value": 20000}]})
    doc["models"]["capped"] = {"targets": ["claude/claude-capped-1"]}
    config = parse_config(doc, env={})
    # what the dispatcher reads of a provider here: its protocol and its adapters, as configured
    providers = {name: Upstream(cfg.wire_protocol(), ProviderAdapters(cfg.wire_protocol(), tuple(cfg.adapters),
                                                                      dict(cfg.model_adapters)))
                 for name, cfg in config.providers.items()}

    def held(targets, hold=None, **fields):
        plan = Plan("m", tuple(Target(*t.split("/", 1)) for t in targets), hold)
        return held_output_tokens(plan, providers, _request("m", **fields), HOLD)

    assert held(["claude/claude-sim"]) == 8192
    assert held(["chat/c"]) == HOLD  # sent no limit: the upstream's own, counted as the default hold
    assert held(["chat/c", "claude/claude-sim"]) == 8192  # the largest over the plan
    assert held(["claude/claude-big"]) == 20000
    assert held(["claude/claude-capped-1"]) == 5000
    assert held(["claude/claude-sim"], max_tokens=300) == 300  # the client's own limit
    assert held(["claude/claude-sim"], max_tokens=100_000) == 8192  # within the model's allowance
    assert held(["claude/claude-sim"], hold=1000) == 1000  # the operator's hold_output_tokens wins
    # a thinking budget comes on top of the default, as the Anthropic target is sent it
    thinking = _request("m")
    plan = Plan("m", (Target("claude", "claude-sim"),))
    assert held_output_tokens(plan, providers, attrs.evolve(thinking, reasoning=Reasoning(budget=4000)), HOLD) == 12192
