"""The meter's pure core: reserve, settle exactly once, over-runs, limits, recovery."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest

from actors.usage import CreateKey, Reserve, Settle, UpdateKey, hash_key
from actors.usage_core import UsageCore
from protocols import errors as E
from protocols.money import Price
from protocols.secret import Secret
from protocols.unified import EndReason, Provenance, Usage


@attrs.frozen
class KeySpec:
    name: str
    key: Secret
    credit_usd: Decimal | None = Decimal("1")
    models: tuple | None = None
    requests_per_minute: int | None = None
    max_concurrency: int | None = None


PRICE = Price(input=Decimal("1"), output=Decimal("2"))


def core(**spec) -> UsageCore:
    c = UsageCore({"p/m": PRICE}, wall=lambda: 1000.0)
    c.seed_keys([KeySpec("k", Secret("secret"), **spec)])
    return c


def reserve(c: UsageCore, rid: str, out: int = 100, now: float = 0.0, model: str = "m"):
    return c.reserve(Reserve(rid, "secret", model, ("p/m",), input_tokens=50, output_tokens=out), now)


def test_hold_is_input_plus_output_allowance_at_the_target_price():
    c = core()
    res, ops = reserve(c, "r1")
    assert res.hold_micro == 50 * 1 + 100 * 2
    assert ops[0][0] == "hold"
    assert c.keys["k"].held_micro == 250


def test_settle_charges_actual_cost_once_and_is_idempotent():
    c = core()
    reserve(c, "r1")
    first, ops = c.settle(Settle("r1", Usage(input=40, output=10), Provenance.REPORTED, EndReason.END, "p", "m"), 0)
    again, more = c.settle(Settle("r1", Usage(input=999, output=999), Provenance.REPORTED, EndReason.END, "p", "m"), 0)
    assert first == again and more == []
    assert first.charged_micro == 60 and first.overrun_micro == 0
    assert c.keys["k"].spent_micro == 60 and c.keys["k"].held_micro == 0


def test_no_usage_charges_the_hold_as_estimated():
    c = core()
    reserve(c, "r1")
    result, _ = c.settle(Settle("r1", None, Provenance.ESTIMATED, EndReason.CLIENT_CANCEL, "p", "m"), 0)
    assert (result.charged_micro, result.provenance, result.cost_source) == (250, Provenance.ESTIMATED, "hold")


def test_overrun_is_charged_and_booked_as_its_own_entry():
    c = core()
    reserve(c, "r1", out=1)
    result, ops = c.settle(Settle("r1", Usage(input=50, output=500), Provenance.REPORTED, EndReason.END, "p", "m"), 0)
    assert result.charged_micro == 1050 and result.overrun_micro == 1050 - 52
    entries = ops[0][1]["entries"]
    assert [(e["kind"], e["amount_micro"]) for e in entries] == [("charge", 52), ("overrun", 998)]


def test_provider_reported_cost_wins():
    c = core()
    reserve(c, "r1")
    result, _ = c.settle(Settle("r1", Usage(input=50, output=10, cost_usd="0.0001"), Provenance.REPORTED,
                                EndReason.END, "p", "m"), 0)
    assert (result.charged_micro, result.cost_source) == (100, "reported")


def test_out_of_credit_before_any_call_and_nothing_changes():
    c = core(credit_usd=Decimal("0.0003"))
    reserve(c, "r1")
    with pytest.raises(E.OutOfCredit):
        reserve(c, "r2")
    assert set(c.holds) == {"r1"} and c.keys["k"].held_micro == 250


def test_bad_key_disabled_key_and_model_allow_list():
    c = core(models=("m",))
    with pytest.raises(E.Unauthenticated):
        c.reserve(Reserve("r", "nope", "m", ("p/m",), 1, 1), 0)
    with pytest.raises(E.Forbidden):
        reserve(c, "r", model="other")
    c.update_key(UpdateKey("k", disabled=True))
    with pytest.raises(E.Unauthenticated):
        reserve(c, "r")


def test_key_rate_and_concurrency_limits():
    c = core(requests_per_minute=2, max_concurrency=5)
    reserve(c, "a", now=0)
    reserve(c, "b", now=1)
    with pytest.raises(E.KeyRateLimited) as caught:
        reserve(c, "c", now=2)
    assert caught.value.retry_after == 58
    reserve(c, "c", now=60)
    c2 = core(max_concurrency=1)
    reserve(c2, "a")
    with pytest.raises(E.KeyRateLimited):
        reserve(c2, "b")
    c2.settle(Settle("a", None, Provenance.ESTIMATED, EndReason.END), 0)
    reserve(c2, "b")


def test_recovery_settles_every_open_hold_at_its_reserve():
    c = core()
    reserve(c, "a")
    reserve(c, "b")
    keys = [k.row() for k in c.keys.values()]
    holds = [{"id": h.id, "key_name": h.key_name, "provider": None, "model": "m", "hold_micro": h.hold_micro,
              "created_at": h.created_at} for h in c.holds.values()]
    fresh = UsageCore({"p/m": PRICE})
    fresh.load(keys, holds)
    ops = fresh.recover()
    assert len(ops) == 2 and not fresh.holds
    assert {e["reason"] for op in ops for e in op[1]["entries"]} == {"recovered"}
    assert fresh.keys["k"].spent_micro == 500 and fresh.keys["k"].held_micro == 0


def test_created_keys_are_stored_hashed_and_shown_once():
    c = core()
    created, ops = c.create_key(CreateKey("new", credit_usd="2.50"))
    assert created["key"].startswith("th-") and created["credit_usd"] == "2.500000"
    assert ops[0][1]["key_hash"] == hash_key(created["key"])
    assert created["key"] not in str(ops) and "key" not in c.keys["new"].view()
