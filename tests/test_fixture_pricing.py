"""Real usage from recorded provider streams, priced: every bucket once, at its price.

Each bucket has a different price here, so a token counted twice (or in the wrong
bucket) changes the amount.
"""

from __future__ import annotations

import json
from decimal import Decimal

import attrs
import pytest

from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.money import Price, cost_micro_usd
from protocols.unified import UsageReport
from providers.base import SSEFramer
from tests.conftest import FIXTURES

PRICE = Price(input=Decimal("3"), cached_input=Decimal("0.3"), cache_write=Decimal("3.75"),
              output=Decimal("15"))


def last_usage(protocol, name: str):
    framer = SSEFramer(protocol.StreamDecoder())
    frames = framer.feed((FIXTURES / name).read_bytes()) + framer.close()
    return [ev.usage for f in frames for ev in f.events if isinstance(ev, UsageReport)][-1]


CASES = [
    # fixture, provider's total, expected micro-USD: each bucket at its price, summed, rounded up once
    (lambda: last_usage(openai_chat, "openai-chat/stream-openrouter-comments-cached-reasoning.sse"),
     874, 3033),  # 8*3 + 679*0.3 + 69*15 + 118*15 = 3032.7
    (lambda: last_usage(anthropic_messages, "anthropic/stream-cache-read-compaction-iterations.sse"),
     None, 18737),  # 281*3 + 55096*0.3 + 91*15 = 18736.8
    (lambda: last_usage(openai_responses, "openai-responses/stream-reasoning-function-call-usage.sse"),
     522, 7194),  # 53*3 + 21*15 + 448*15
    (lambda: gemini.parse_response(json.loads((FIXTURES / "gemini/generate-content-cached-content-usage.json")
                                              .read_text())).usage,
     3564, 1738),  # 8*3 + 3512*0.3 + 2*15 + 42*15 = 1737.6
    (lambda: last_usage(gemini, "gemini/stream-sse-thoughts-token-count.sse"), None, 1779),  # 18*3 + 80*15 + 35*15
]


@pytest.mark.parametrize("usage_of,total,expected", CASES,
                         ids=["openrouter-cached-reasoning", "anthropic-cache-read", "responses-reasoning",
                              "gemini-cached-content", "gemini-thoughts"])
def test_recorded_usage_is_priced_once_per_token(usage_of, total, expected):
    usage = attrs.evolve(usage_of(), cost_usd=None)
    if total is not None:
        assert usage.total == total, "the buckets add up to the provider's own total"
    cost, reported = cost_micro_usd(usage, PRICE)
    assert not reported
    assert cost == expected


def test_a_cost_the_provider_reports_wins():
    usage = last_usage(openai_chat, "openai-chat/stream-openrouter-comments-cached-reasoning.sse")
    assert usage.cost_usd == "0.00333825"
    assert cost_micro_usd(usage, PRICE) == (3339, True)
