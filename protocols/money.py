"""Prices and costs: decimal USD per million tokens in, integer micro-USD out.

Rounding happens once per request, in ``cost_micro_usd``: the exact decimal cost is
rounded up to the next micro-USD (a ledger never under-charges by a rounding).
A provider-reported cost, when present, replaces the computed one.

A price per million tokens is micro-USD per token, so a cost in micro-USD is a sum of
tokens times rates. Each ``Price`` keeps its rates as integers over one power of ten
(``scaled``), made once: the sum is then integer arithmetic, exact, rounded up by one
integer division -- the number ``Decimal`` gives, without a ``Decimal`` per bucket on
every request. A rate written with more than ``MAX_SCALE`` decimals, or past
``MAX_RATE`` micro-USD a token, keeps the ``Decimal`` sum, each of its roundings
upwards.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext

import attrs

from protocols.unified import Usage

MICRO = Decimal(1_000_000)
BUCKETS = ("input", "cached_input", "cache_write", "output", "reasoning")  # ``Price.per_bucket``'s order
MAX_SCALE = 30  # decimals of a rate kept as an integer
MAX_RATE = Decimal(10**15)  # micro-USD per token: past it, the ``Decimal`` sum


@attrs.frozen
class Price:
    """USD per million tokens; unset optional buckets fall back to ``input``/``output``."""

    input: Decimal = Decimal(0)
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal = Decimal(0)
    reasoning: Decimal | None = None
    #: the rates of ``BUCKETS`` as integers over one divisor (a power of ten), or None
    scaled: tuple[tuple[int, ...], int] | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "scaled", _scaled(self.per_bucket()))

    def per_bucket(self) -> dict[str, Decimal]:
        return {
            "input": self.input,
            "cached_input": self.input if self.cached_input is None else self.cached_input,
            "cache_write": self.input if self.cache_write is None else self.cache_write,
            "output": self.output,
            "reasoning": self.output if self.reasoning is None else self.reasoning,
        }


def _scaled(rates: dict[str, Decimal]) -> tuple[tuple[int, ...], int] | None:
    """Rates as integers over one power of ten: ``Decimal("0.15")`` -> 15 over 100."""
    if any(not rate.is_finite() or rate > MAX_RATE for rate in rates.values()):
        return None
    shapes = {b: rates[b].as_tuple() for b in BUCKETS}
    exponent = max(0, *(-int(shape.exponent) for shape in shapes.values()))
    if exponent > MAX_SCALE:
        return None
    # from the digits, not ``scaleb``: exact whatever the decimal context's precision
    return tuple(int("".join(map(str, shape.digits))) * 10 ** (exponent + int(shape.exponent))
                 for shape in shapes.values()), 10 ** exponent


FREE = Price()


def exact_cost_usd(usage: Usage, price: Price) -> Decimal:
    """The cost in USD as ``Decimal`` computes it, every rounding upwards: where the
    context's precision cannot hold the exact sum, the result is just above it, never
    below."""
    rates = price.per_bucket()
    with localcontext() as ctx:
        ctx.rounding = ROUND_CEILING
        total = sum((Decimal(getattr(usage, bucket)) * rate for bucket, rate in rates.items()), Decimal(0))
        return total / MICRO


def to_micro(usd: Decimal) -> int:
    return int((usd * MICRO).to_integral_value(rounding=ROUND_CEILING))


def cost_micro_usd(usage: Usage, price: Price) -> tuple[int, bool]:
    """(cost, reported): the provider's own cost if it sent one, else the table's."""
    if usage.cost_usd is not None:
        return to_micro(Decimal(usage.cost_usd)), True
    if price.scaled is None:
        return to_micro(exact_cost_usd(usage, price)), False
    (i, ci, cw, o, r), divisor = price.scaled
    numerator = (usage.input * i + usage.cached_input * ci + usage.cache_write * cw + usage.output * o
                 + usage.reasoning * r)
    return -(-numerator // divisor), False


def usd(micro: int) -> str:
    """Micro-USD as a decimal string for display."""
    return str((Decimal(micro) / MICRO).quantize(Decimal("0.000001")))
