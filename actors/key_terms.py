"""A key's terms in time: when it expires, and its periodic budget's calendar.

Pure and clock-free: every function takes the wall time it judges (unix seconds), so
the meter's core and its tests decide what "now" is. Expiry times are written as ISO
8601 in UTC (``2026-12-31T00:00:00Z``; an explicit ``Z`` or ``+00:00`` is required, so
no local time zone ever moves a deadline) and kept as whole unix seconds. Budget
periods are UTC calendar periods: a day from midnight, a week from Monday midnight, a
month from the first at midnight.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from actors.usage_bounds import MAX_MICRO, amount
from protocols.errors import InvalidRequest
from protocols.money import to_micro

UTC_TIME_RULE = "must be an ISO 8601 time in UTC, like '2026-12-31T00:00:00Z'"


class Period(enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


PERIODS = tuple(p.value for p in Period)
ADJECTIVES = {Period.DAY: "daily", Period.WEEK: "weekly", Period.MONTH: "monthly"}


@attrs.frozen
class Budget:
    """At most ``limit_micro`` charged per UTC ``period``, alongside the prepaid credit."""

    period: Period
    limit_micro: int

    @classmethod
    def of(cls, value: Any) -> "Budget | None":
        """A budget from its config or admin spelling (an object with ``period`` and
        ``limit_usd``), or None; ``InvalidRequest`` for anything else."""
        if value is None or isinstance(value, Budget):
            return value
        period, limit_usd = getattr(value, "period", None), getattr(value, "limit_usd", None)
        if period not in PERIODS:
            raise InvalidRequest(f"budget.period must be one of {', '.join(PERIODS)}", param="budget")
        limit_micro = to_micro(amount(limit_usd))
        if limit_micro > MAX_MICRO:
            raise InvalidRequest("budget.limit_usd is too large", param="budget")
        return cls(Period(period), limit_micro)


def parse_utc(value: str | None) -> int | None:
    """An ISO 8601 UTC time as unix seconds (None stays None); ValueError otherwise."""
    if value is None:
        return None
    if not isinstance(value, str) or not (value.endswith("Z") or value.endswith("+00:00")):
        raise ValueError(UTC_TIME_RULE)
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(UTC_TIME_RULE) from None
    if moment.utcoffset() != timedelta(0):
        raise ValueError(UTC_TIME_RULE)
    return int(moment.timestamp())


def is_utc_time(value: Any) -> bool:
    try:
        parse_utc(value)
    except ValueError:
        return False
    return True


def format_utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def period_start(period: Period, wall: float) -> int:
    """The unix second the UTC period holding ``wall`` began."""
    moment = datetime.fromtimestamp(wall, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.WEEK:
        moment -= timedelta(days=moment.weekday())  # Monday is 0
    elif period is Period.MONTH:
        moment = moment.replace(day=1)
    return int(moment.timestamp())


def period_end(period: Period, wall: float) -> int:
    """The unix second the UTC period holding ``wall`` ends (the next one begins)."""
    start = datetime.fromtimestamp(period_start(period, wall), timezone.utc)
    if period is Period.DAY:
        end = start + timedelta(days=1)
    elif period is Period.WEEK:
        end = start + timedelta(days=7)
    else:
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return int(end.timestamp())
