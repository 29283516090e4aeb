"""The shared meter's refresh, without I/O: the core's record of a key as the ledger's
rows and every instance's open reservations say."""

from __future__ import annotations

from decimal import Decimal

import pytest

from actors.key_terms import parse_utc
from actors.usage_core import UsageCore
from actors.usage_messages import Reserve, hash_key
from actors.usage_refresh import adopt, refresh
from protocols.errors import KeyRateLimited
from protocols.money import Price

DAY = parse_utc("2026-12-02T00:00:00Z")
NOON = DAY + 12 * 3600


def _row(**more) -> dict:
    return {"name": "k", "key_hash": "h", "credit_micro": 1_000_000, "spent_micro": 200_000, "disabled": False,
            "models": None, "requests_per_minute": None, "max_concurrency": 3, "created_at": 0.0,
            "revoked_at": None, "expires_at": None, "budget_period": "day", "budget_limit_micro": 500_000,
            "budget_start": DAY, "budget_spent_micro": 100_000, **more}


def test_a_refreshed_key_holds_what_every_instance_holds_and_counts_its_period():
    core = UsageCore({}, wall=lambda: NOON)
    refresh(core, [_row()], {"k": [(DAY, 30_000, 2), (DAY - 86400, 5_000, 1)]}, NOON)
    state = core.keys["k"]
    assert (state.held_micro, state.in_flight) == (35_000, 3)
    assert state.available() == 1_000_000 - 200_000 - 35_000
    assert state.budget_held_micro == 30_000  # yesterday's hold does not count against today
    assert state.budget_available() == 500_000 - 100_000 - 30_000
    assert core.by_hash["h"] is state


def test_a_new_day_starts_the_budget_count_afresh_and_an_adopted_hold_keeps_its_period():
    core = UsageCore({}, wall=lambda: NOON + 86400)
    refresh(core, [_row()], {"k": [(DAY, 30_000, 1)]}, NOON + 86400)
    state = core.keys["k"]
    assert state.budget_start == DAY + 86400 and state.budget_spent_micro == 0 and state.budget_held_micro == 0
    hold = adopt(core, {"id": "r1", "key_name": "k", "provider": None, "model": "demo", "hold_micro": 30_000,
                        "created_at": float(NOON), "budget_start": DAY})
    assert hold.budget_mark is None and core.holds["r1"] is hold  # counted in its own (past) day only


def test_a_revoked_row_replaces_what_the_core_knew():
    core = UsageCore({}, wall=lambda: NOON)
    refresh(core, [_row()], {}, NOON)
    refresh(core, [_row(revoked_at=float(NOON), key_hash="h2")], {}, NOON)
    assert core.keys["k"].revoked_at == NOON and "h" not in core.by_hash and "h2" in core.by_hash


def test_a_clock_behind_the_ledgers_budget_period_counts_in_that_period_not_a_fresh_one():
    """Another instance's clock crossed midnight first and charged in the new day: this
    one, a few seconds behind, must not open yesterday's budget afresh and spend it again."""
    late = DAY + 86400 - 2  # two seconds before the day the ledger already counts in
    core = UsageCore({"sim/m": Price(input=Decimal("1"), output=Decimal("1"))}, wall=lambda: late)
    refresh(core, [_row(key_hash=hash_key("sk-k"), budget_start=DAY + 86400, budget_spent_micro=500_000)], {}, late)
    state = core.keys["k"]
    assert state.budget_start == DAY + 86400 and state.budget_available() == 0
    with pytest.raises(KeyRateLimited):
        core.reserve(Reserve("r1", "sk-k", "m", ("sim/m",), 10, 10), now=0.0)
