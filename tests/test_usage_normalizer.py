"""One mapping table per provider: disjoint buckets, nothing counted twice."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext

import pytest

from protocols.money import Price, cost_micro_usd
from protocols.unified import Usage
from protocols.usage import normalize


def test_openai_chat_cached_and_reasoning_are_carved_out():
    u = normalize("openai_chat", {"prompt_tokens": 687, "completion_tokens": 187, "cost": 0.00333825,
                                  "prompt_tokens_details": {"cached_tokens": 679},
                                  "completion_tokens_details": {"reasoning_tokens": 118}})
    assert u == Usage(input=8, cached_input=679, output=69, reasoning=118, cost_usd="0.00333825")
    assert u.total == 687 + 187


def test_openai_responses():
    u = normalize("openai_responses", {"input_tokens": 100, "output_tokens": 50,
                                       "input_tokens_details": {"cached_tokens": 40},
                                       "output_tokens_details": {"reasoning_tokens": 30}})
    assert u == Usage(input=60, cached_input=40, output=20, reasoning=30)


def test_anthropic_input_excludes_cache():
    u = normalize("anthropic", {"input_tokens": 10, "cache_read_input_tokens": 55096,
                                "cache_creation_input_tokens": 200, "output_tokens": 7})
    assert u == Usage(input=10, cached_input=55096, cache_write=200, output=7)


def test_gemini_thoughts_outside_candidates_and_cache_inside_prompt():
    u = normalize("gemini", {"promptTokenCount": 3520, "cachedContentTokenCount": 3512,
                             "candidatesTokenCount": 20, "thoughtsTokenCount": 42, "totalTokenCount": 3582})
    assert u == Usage(input=8, cached_input=3512, output=20, reasoning=42)
    assert u.total == 3582


def test_missing_usage_is_none_and_junk_is_zero():
    assert normalize("openai_chat", None) is None
    assert normalize("openai_chat", {"prompt_tokens": "x", "completion_tokens": True}) == Usage()


def test_cost_uses_each_bucket_price_once_and_rounds_up_once():
    price = Price(input=Decimal("1"), cached_input=Decimal("0.1"), cache_write=Decimal("1.25"),
                  output=Decimal("2"), reasoning=None)
    usage = Usage(input=1, cached_input=10, cache_write=4, output=3, reasoning=2)
    # 1*1 + 10*0.1 + 4*1.25 + 3*2 + 2*2 = 17 micro-USD exactly
    assert cost_micro_usd(usage, price) == (17, False)
    assert cost_micro_usd(Usage(input=1), Price(input=Decimal("0.15"))) == (1, False)
    assert cost_micro_usd(Usage(input=1, cost_usd="0.00333825"), price) == (3339, True)


@pytest.mark.parametrize("rates", [
    ("0.15", "0.6"), ("3", "15"), ("0.075", "0.0000001"), ("1E+3", "12.3456789"),
    ("123456.123456789012345678901234", "0"),  # more digits than the decimal context keeps
    ("1e-40", "2"),  # past MAX_SCALE decimals: the Decimal sum
    ("1e20", "1"),  # past MAX_RATE: the Decimal sum
])
def test_the_integer_cost_is_the_exact_decimal_cost_rounded_up(rates):
    price = Price(input=Decimal(rates[0]), cached_input=Decimal(rates[1]), output=Decimal(rates[1]))
    for usage in (Usage(), Usage(input=1), Usage(input=7, cached_input=1234, cache_write=3, output=10**6, reasoning=5),
                  Usage(input=10**10, output=10**10, reasoning=10**10)):
        with localcontext() as ctx:
            ctx.prec = 200  # exact here, whatever the default context would round
            exact = sum((Decimal(getattr(usage, b)) * r for b, r in price.per_bucket().items()), Decimal(0))
            expected = int(exact.to_integral_value(rounding=ROUND_CEILING))
        assert cost_micro_usd(usage, price) == (expected, False)
