"""The bounds no input to the meter can cross: no message mints, refunds or overflows.

A hold is built from token counts a client influences, a settlement from usage an
upstream reports, a balance from amounts an operator types. Each passes through here
first: token counts for a hold must be whole and non-negative (a negative one is a
client's attempt to hold negative credit and is refused); reported usage is clamped
into range bucket by bucket (an upstream's nonsense is not a refund); amounts are
finite, non-negative decimals; and every amount fits the ledger's 64-bit integers
with room to add (no request is worth more than ``MAX_MICRO``). A key's own limits
(requests per minute, concurrency) are whole numbers up to ``MAX_LIMIT``, so they too
fit the ledger's integers.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from protocols.errors import InvalidRequest
from protocols.unified import Usage

MAX_TOKENS = 10**10  # per bucket: no model reads or writes ten billion tokens in one call
MAX_USD = Decimal(10**9)  # one amount (a credit, one charge): a billion dollars
MAX_MICRO = 10**15  # MAX_USD in micro-USD; 9,000 of them still fit an SQLite INTEGER
MAX_LIMIT = 10**9  # a key's requests_per_minute or max_concurrency: past this it is no limit at all
BUCKETS = ("input", "cached_input", "cache_write", "output", "reasoning")


def hold_tokens(value: Any, what: str) -> int:
    """A token count a hold is built from: a whole number in ``[0, MAX_TOKENS]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be a whole number of tokens, not {value!r}")
    if value < 0 or value > MAX_TOKENS:
        raise InvalidRequest(f"{what} must be between 0 and {MAX_TOKENS} tokens, not {value}")
    return value


def micro(value: int) -> int:
    """An amount of micro-USD kept in ``[0, MAX_MICRO]``."""
    return min(max(value, 0), MAX_MICRO)


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return 0
        value = int(value)
    if not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_TOKENS)


def reported_cost(value: Any) -> Decimal | None:
    """A provider's own cost in USD, or None when it is absent or not a sane amount
    (negative, NaN, infinite, absurd): the price table is used instead."""
    if value is None or isinstance(value, bool):
        return None
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        return None
    if not cost.is_finite() or cost < 0 or cost > MAX_USD:
        return None
    return cost


def clean_usage(usage: Usage) -> Usage:
    """Reported usage with every bucket in ``[0, MAX_TOKENS]`` and a sane cost or none."""
    if usage.cost_usd is None and all(type(n) is int and 0 <= n <= MAX_TOKENS for n in (
            usage.input, usage.cached_input, usage.cache_write, usage.output, usage.reasoning)):
        return usage  # already clean: the common case, without rebuilding it to find out
    counts = {b: _count(getattr(usage, b)) for b in BUCKETS}
    cost = reported_cost(usage.cost_usd)
    cleaned = attrs.evolve(usage, **counts, cost_usd=None if cost is None else str(cost))
    return usage if cleaned == usage else cleaned


def amount(value: Any) -> Decimal:
    """An operator's amount in USD: a finite decimal in ``[0, MAX_USD]``."""
    if isinstance(value, bool):
        raise InvalidRequest(f"not a decimal amount: {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest(f"not a decimal amount: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise InvalidRequest(f"amount must be >= 0: {value!r}")
    if d > MAX_USD:
        raise InvalidRequest(f"amount must be at most {MAX_USD} USD: {value!r}")
    return d


def limit(value: Any, what: str) -> int | None:
    """A key's limit: None (no limit) or a whole number in ``[1, MAX_LIMIT]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be a whole number or null, not {type(value).__name__}", param=what)
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"{what} must be between 1 and {MAX_LIMIT:,}, or null for no limit", param=what)
    return value
