"""A key's terms in time, in the meter's pure core on a virtual wall clock: revocation,
expiry, and periodic budgets on UTC calendar periods (durable in a real ledger)."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest

from actors.key_terms import Budget, Period, format_utc, parse_utc, period_end, period_start
from actors.ledger import Ledger
from actors.usage import Reserve, RevokeKey, Settle, UpdateKey
from actors.usage_core import UsageCore
from protocols import errors as E
from protocols.money import Price
from protocols.secret import Secret
from protocols.unified import EndReason, Provenance, Usage

PRICE = Price(input=Decimal("1"), output=Decimal("2"))  # per million tokens: 1 and 2 micro-USD a token


@attrs.frozen
class KeySpec:
    name: str
    key: Secret
    credit_usd: Decimal | None = Decimal("1")
    models: tuple | None = None
    requests_per_minute: int | None = None
    max_concurrency: int | None = None
    expires_at: int | None = None
    budget: Budget | None = None


class Wall:
    """The core's clock argument: virtual wall time the test moves."""

    def __init__(self, iso: str) -> None:
        self.t = float(parse_utc(iso))

    def __call__(self) -> float:
        return self.t

    def set(self, iso: str) -> None:
        self.t = float(parse_utc(iso))


def core(wall: Wall, **spec) -> UsageCore:
    c = UsageCore({"p/m": PRICE}, wall=wall)
    c.seed_keys([KeySpec("k", Secret("secret"), **spec)])
    return c


def reserve(c: UsageCore, rid: str, out: int = 100):
    return c.reserve(Reserve(rid, "secret", "m", ("p/m",), input_tokens=50, output_tokens=out), 0.0)


def settle(c: UsageCore, rid: str, output: int = 10):
    return c.settle(Settle(rid, Usage(input=50, output=output), Provenance.REPORTED, EndReason.END, "p", "m"), 0.0)


def test_utc_calendar_periods():
    wed = parse_utc("2026-12-02T14:30:00Z")  # a Wednesday
    assert format_utc(period_start(Period.DAY, wed)) == "2026-12-02T00:00:00Z"
    assert format_utc(period_end(Period.DAY, wed)) == "2026-12-03T00:00:00Z"
    assert format_utc(period_start(Period.WEEK, wed)) == "2026-11-30T00:00:00Z"  # Monday
    assert format_utc(period_end(Period.WEEK, wed)) == "2026-12-07T00:00:00Z"
    assert format_utc(period_start(Period.MONTH, wed)) == "2026-12-01T00:00:00Z"
    assert format_utc(period_end(Period.MONTH, wed)) == "2027-01-01T00:00:00Z"
    monday = parse_utc("2026-11-30T00:00:00Z")
    assert period_start(Period.WEEK, monday) == monday and period_start(Period.WEEK, monday - 1) < monday


@pytest.mark.parametrize("text", ["2026-12-02T14:30:00", "2026-12-02T14:30:00+02:00", "tomorrow",
                                  "2026-13-01T00:00:00Z"])
def test_an_expiry_must_be_iso_8601_in_utc(text):
    with pytest.raises(ValueError):
        parse_utc(text)


def test_an_expiry_in_utc_is_unix_seconds():
    assert parse_utc("1970-01-02T00:00:00Z") == parse_utc("1970-01-02T00:00:00+00:00") == 86400


def test_a_daily_budget_refuses_at_its_limit_and_resets_at_the_utc_boundary():
    wall = Wall("2026-12-02T23:59:00Z")
    c = core(wall, budget=Budget(Period.DAY, 700))  # one hold of 250 micro at a time, and some
    reserve(c, "r1")
    reserve(c, "r2")  # 500 held of 700
    with pytest.raises(E.KeyRateLimited) as refused:
        reserve(c, "r3")  # holds count against the budget while held
    assert refused.value.retry_after == 60.0 and "2026-12-03T00:00:00Z" in refused.value.message
    settle(c, "r1")  # charged 50 + 20: the rest of its hold is free again
    assert c.keys["k"].budget_spent_micro == 70 and c.keys["k"].budget_held_micro == 250
    reserve(c, "r3")
    assert "r3" in c.holds
    wall.set("2026-12-03T00:00:00Z")
    reserve(c, "r4")  # the new day counts afresh: r2 and r3 belong to yesterday
    state = c.keys["k"]
    assert (state.budget_spent_micro, state.budget_held_micro) == (0, 250)
    settle(c, "r2")  # a charge counts in its reservation's period, not today's
    assert (state.budget_spent_micro, state.budget_held_micro) == (0, 250)
    assert state.spent_micro == 140  # the prepaid credit counts every charge
    view = state.view(wall())
    assert view["budget"]["spent_usd"] == "0.000000" and view["budget"]["resets_at"] == "2026-12-04T00:00:00Z"


def test_a_budget_refusal_holds_and_charges_nothing():
    wall = Wall("2026-12-02T12:00:00Z")
    c = core(wall, budget=Budget(Period.MONTH, 100))
    with pytest.raises(E.KeyRateLimited) as refused:
        reserve(c, "r1")
    assert refused.value.status == 429
    assert refused.value.retry_after == parse_utc("2027-01-01T00:00:00Z") - wall()
    state = c.keys["k"]
    assert (state.held_micro, state.spent_micro, state.in_flight, c.holds) == (0, 0, 0, {})


def test_a_new_limit_keeps_the_count_and_a_new_period_starts_it_again():
    wall = Wall("2026-12-02T12:00:00Z")
    c = core(wall, budget=Budget(Period.DAY, 1000))
    reserve(c, "r1")
    settle(c, "r1")
    c.update_key(UpdateKey("k", budget=Budget(Period.DAY, 70)))
    with pytest.raises(E.KeyRateLimited):
        reserve(c, "r2")
    _, ops = c.update_key(UpdateKey("k", budget=Budget(Period.WEEK, 300)))
    assert ("reset_budget", {"name": "k", "budget_start": parse_utc("2026-11-30T00:00:00Z")}) in ops
    reserve(c, "r2")
    assert c.keys["k"].budget_held_micro == 250


def test_the_spent_in_period_is_durable_in_the_ledger(tmp_path):
    wall = Wall("2026-12-02T10:00:00Z")
    ledger = Ledger(tmp_path)
    c = core(wall, budget=Budget(Period.DAY, 1000))
    ledger.apply([("put_key", c.keys["k"].row())])
    for rid in ("r1", "r2"):
        _, ops = reserve(c, rid)
        ledger.apply(ops)
        _, ops = settle(c, rid)
        ledger.apply(ops)
    keys, holds = ledger.load()
    restarted = UsageCore({"p/m": PRICE}, wall=wall)
    restarted.load(keys, holds)
    assert restarted.keys["k"].budget_spent_micro == 140
    assert restarted.keys["k"].view(wall())["budget"]["spent_usd"] == "0.000140"
    wall.set("2026-12-03T00:00:01Z")  # the next day: the count starts again
    _, ops = reserve(restarted, "r3")
    ledger.apply(ops)
    _, ops = settle(restarted, "r3")
    ledger.apply(ops)
    again = UsageCore({"p/m": PRICE}, wall=wall)
    again.load(*ledger.load())
    assert again.keys["k"].budget_spent_micro == 70
    assert again.keys["k"].spent_micro == 210
    ledger.close()


def test_an_expired_key_is_refused_and_never_charged():
    wall = Wall("2026-12-02T10:00:00Z")
    c = core(wall, expires_at=parse_utc("2026-12-02T11:00:00Z"))
    reserve(c, "r1")
    wall.set("2026-12-02T11:00:00Z")
    with pytest.raises(E.Unauthenticated) as refused:
        reserve(c, "r2")
    assert "expired" in refused.value.message and "2026-12-02T11:00:00Z" in refused.value.message
    settle(c, "r1")  # a request reserved before the expiry settles as usual
    assert c.keys["k"].spent_micro == 70 and "r2" not in c.holds


def test_a_revoked_key_is_refused_and_its_open_hold_settles():
    wall = Wall("2026-12-02T10:00:00Z")
    c = core(wall)
    reserve(c, "r1")
    view, ops = c.revoke_key(RevokeKey("k"))
    assert view["revoked"] is True and view["revoked_at"] == "2026-12-02T10:00:00Z" and ops[0][0] == "put_key"
    with pytest.raises(E.Unauthenticated) as refused:
        reserve(c, "r2")
    assert "revoked" in refused.value.message
    again, more = c.revoke_key(RevokeKey("k"))
    assert again == view and more == []  # idempotent: the same answer, nothing written
    result, _ = settle(c, "r1")
    assert result.charged_micro == 70 and c.keys["k"].spent_micro == 70
    with pytest.raises(E.NotFound):
        c.revoke_key(RevokeKey("nobody"))
    with pytest.raises(E.InvalidRequest):
        c.update_key(UpdateKey("k", disabled=False))
    assert c.seed_keys([KeySpec("k", Secret("secret"))]) == []  # a config key stays as the ledger has it


def test_key_terms_in_the_config_are_checked_with_their_json_paths(tmp_path):
    from gateway.config import ConfigError, parse_config
    from tests.conftest import base_config

    doc = base_config(tmp_path)
    doc["keys"][0].update(expires_at="2026-12-31T00:00:00", budget={"period": "fortnight", "limit_usd": "x"})
    doc["keys"].append({"name": "b", "key": "th-b", "unlimited": True, "budget": {"period": "week", "limits": "1"}})
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, env={})
    problems = "\n".join(refused.value.problems)
    assert "keys[0].expires_at: must be an ISO 8601 time in UTC" in problems
    assert "keys[0].budget.period: unknown value 'fortnight'" in problems
    assert "keys[0].budget.limit_usd: not a decimal number" in problems
    assert "keys[1].budget.limits: unknown setting; did you mean 'limit_usd'?" in problems
    assert "keys[1].budget.limit_usd: is required" in problems
    doc = base_config(tmp_path)
    doc["keys"][0].update(expires_at="2026-12-31T00:00:00Z", budget={"period": "month", "limit_usd": "25"})
    key = parse_config(doc, env={}).keys[0]
    assert key.expires_at == parse_utc("2026-12-31T00:00:00Z") and key.budget.period == "month"
    assert Budget.of(key.budget) == Budget(Period.MONTH, 25_000_000)


def test_a_ledger_from_before_key_terms_opens_and_keeps_its_keys(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    db.execute("CREATE TABLE keys (name TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, credit_micro INTEGER, "
               "spent_micro INTEGER NOT NULL DEFAULT 0, disabled INTEGER NOT NULL DEFAULT 0, models TEXT, "
               "requests_per_minute INTEGER, max_concurrency INTEGER, created_at REAL NOT NULL)")
    db.execute("INSERT INTO keys VALUES ('old', 'h', 1000, 30, 0, NULL, NULL, NULL, 1.0)")
    db.commit()
    db.close()
    ledger = Ledger(tmp_path)
    (key,), _ = ledger.load()
    assert (key["name"], key["spent_micro"], key["revoked_at"], key["expires_at"], key["budget_period"],
            key["budget_spent_micro"]) == ("old", 30, None, None, None, 0)
    c = UsageCore({"p/m": PRICE}, wall=Wall("2026-12-02T10:00:00Z"))
    c.load([key], [])
    view, ops = c.revoke_key(RevokeKey("old"))
    ledger.apply(ops)
    (key,), _ = ledger.load()
    assert key["revoked_at"] == parse_utc("2026-12-02T10:00:00Z") and key["spent_micro"] == 30
    ledger.close()


def test_null_removes_an_expiry_and_a_budget():
    wall = Wall("2026-12-02T12:00:00Z")
    c = core(wall, expires_at=parse_utc("2026-12-01T00:00:00Z"), budget=Budget(Period.DAY, 10))
    with pytest.raises(E.Unauthenticated):
        reserve(c, "r1")
    view, ops = c.update_key(UpdateKey("k", expires_at=None, budget=None))
    assert (view["expires_at"], view["expired"], view["budget"]) == (None, False, None)
    assert ("reset_budget", {"name": "k", "budget_start": None}) in ops
    reserve(c, "r1")  # neither refuses it any more
