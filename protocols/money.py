"""Prices and costs: decimal USD per million tokens in, integer micro-USD out.

Rounding happens once per request, in ``cost_micro_usd``: the exact decimal cost is
rounded up to the next micro-USD (a ledger never under-charges by a rounding).
A provider-reported cost, when present, replaces the computed one.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import attrs

from protocols.unified import Usage

MICRO = Decimal(1_000_000)


@attrs.frozen
class Price:
    """USD per million tokens; unset optional buckets fall back to ``input``/``output``."""

    input: Decimal = Decimal(0)
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal = Decimal(0)
    reasoning: Decimal | None = None

    def per_bucket(self) -> dict[str, Decimal]:
        return {
            "input": self.input,
            "cached_input": self.input if self.cached_input is None else self.cached_input,
            "cache_write": self.input if self.cache_write is None else self.cache_write,
            "output": self.output,
            "reasoning": self.output if self.reasoning is None else self.reasoning,
        }


FREE = Price()


def exact_cost_usd(usage: Usage, price: Price) -> Decimal:
    rates = price.per_bucket()
    total = sum((Decimal(getattr(usage, bucket)) * rate for bucket, rate in rates.items()), Decimal(0))
    return total / MICRO


def to_micro(usd: Decimal) -> int:
    return int((usd * MICRO).to_integral_value(rounding=ROUND_CEILING))


def cost_micro_usd(usage: Usage, price: Price) -> tuple[int, bool]:
    """(cost, reported): the provider's own cost if it sent one, else the table's."""
    if usage.cost_usd is not None:
        return to_micro(Decimal(usage.cost_usd)), True
    return to_micro(exact_cost_usd(usage, price)), False


def usd(micro: int) -> str:
    """Micro-USD as a decimal string for display."""
    return str((Decimal(micro) / MICRO).quantize(Decimal("0.000001")))
