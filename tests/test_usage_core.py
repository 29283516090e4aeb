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
    assert created["key"] not in str(ops) and "key" not in c.keys["new"].view(c.wall())


# ---------------------------------------------------------------- bounds: nothing mints money

from hypothesis import given, settings, strategies as st  # noqa: E402

from actors.usage_bounds import MAX_MICRO  # noqa: E402


def test_negative_or_fractional_token_counts_are_refused_and_hold_nothing():
    c = core()
    for bad in (-1, -10**9, 1.5, "100", True, 10**30):
        with pytest.raises(E.InvalidRequest):
            c.reserve(Reserve(f"r{bad}", "secret", "m", ("p/m",), input_tokens=50, output_tokens=bad), 0)
        with pytest.raises(E.InvalidRequest):
            c.reserve(Reserve(f"r{bad}", "secret", "m", ("p/m",), input_tokens=bad, output_tokens=1), 0)
    assert not c.holds and c.keys["k"].held_micro == 0 and c.keys["k"].in_flight == 0


def test_a_target_without_a_price_is_refused_and_an_explicit_zero_price_is_free():
    c = UsageCore({"p/m": PRICE, "free/*": Price()}, wall=lambda: 0.0)
    c.seed_keys([KeySpec("k", Secret("secret"))])
    with pytest.raises(E.Forbidden, match="no price is configured for q/x"):
        c.reserve(Reserve("r1", "secret", "m", ("p/m", "q/x"), 1, 1), 0)
    assert not c.holds and c.keys["k"].in_flight == 0
    res, _ = c.reserve(Reserve("r2", "secret", "m", ("free/anything",), 1000, 1000), 0)
    assert res.hold_micro == 0
    done, _ = c.settle(Settle("r2", Usage(input=5, output=5), Provenance.REPORTED, EndReason.END, "free", "anything"), 0)
    assert (done.charged_micro, done.cost_source) == (0, "pricing")


def test_negative_usage_and_a_negative_reported_cost_are_not_refunds():
    c = core()
    reserve(c, "r1")
    done, ops = c.settle(Settle("r1", Usage(input=-10**6, output=-5, cost_usd="-3.00"), Provenance.REPORTED,
                                EndReason.END, "p", "m"), 0)
    assert done.charged_micro == 0 and done.cost_source == "pricing"
    assert c.keys["k"].spent_micro == 0
    reserve(c, "r2")
    done, _ = c.settle(Settle("r2", Usage(input=50, output=10, cost_usd="NaN"), Provenance.REPORTED,
                              EndReason.END, "p", "m"), 0)
    assert (done.charged_micro, done.cost_source) == (70, "pricing")


def test_a_refused_reserve_write_is_rolled_back_in_the_core():
    c = core(max_concurrency=1, requests_per_minute=1)
    reserve(c, "r1", now=5.0)
    c.cancel_reserve("r1", 5.0)
    state = c.keys["k"]
    assert (state.held_micro, state.in_flight, len(state.recent), c.holds) == (0, 0, 0, {})
    reserve(c, "r2", now=5.0)  # neither the concurrency slot nor the minute's request was used up


def test_a_settled_hold_is_listed_as_settling_until_it_is_written():
    c = core(max_concurrency=1)
    reserve(c, "r1")
    assert [r["status"] for r in c.query("reservations")] == ["open"]
    c.settle(Settle("r1", None, Provenance.ESTIMATED, EndReason.END), 0)
    assert [(r["request_id"], r["status"]) for r in c.query("reservations")] == [("r1", "settling")]
    assert c.keys["k"].in_flight == 0
    reserve(c, "r2")  # the key's slot is free at once
    c.written(["r1"])
    assert [(r["request_id"], r["status"]) for r in c.query("reservations")] == [("r2", "open")]


def test_settle_records_its_basis_and_unanswered_attempts():
    c = core()
    reserve(c, "r1")
    _, ops = c.settle(Settle("r1", None, Provenance.ESTIMATED, EndReason.CLIENT_CANCEL, "p", "m",
                             basis="hold", unanswered=("p/m@a",)), 0)
    [entry] = ops[0][1]["entries"]
    assert (entry["basis"], entry["unanswered"]) == ("hold", ["p/m@a"])


def test_a_key_without_credit_is_unlimited_only_when_it_says_so():
    c = core()
    with pytest.raises(E.InvalidRequest, match="unlimited"):
        c.create_key(CreateKey("a"))
    with pytest.raises(E.InvalidRequest, match="not both"):
        c.create_key(CreateKey("b", credit_usd="1", unlimited=True))
    with pytest.raises(E.InvalidRequest):
        c.create_key(CreateKey("c", unlimited="yes"))
    assert set(c.keys) == {"k"}
    created, _ = c.create_key(CreateKey("d", unlimited=True))
    assert created["credit_usd"] is None and created["available_usd"] is None


def test_a_refused_key_change_is_undone():
    c = core()
    before = c.settings("k")
    c.update_key(UpdateKey("k", credit_usd="9", disabled=True, max_concurrency=3))
    c.restore("k", before)
    assert c.settings("k") == before
    c.create_key(CreateKey("new", credit_usd="1"))
    c.restore("new", None)
    assert "new" not in c.keys and len(c.by_hash) == 1


def test_amounts_that_do_not_fit_the_ledger_are_refused():
    c = core()
    for bad in ("1e30", "Infinity", "NaN", "-1", True, "sNaN"):
        with pytest.raises(E.InvalidRequest):
            c.create_key(CreateKey(f"x{bad}", credit_usd=bad))
        with pytest.raises(E.InvalidRequest):
            c.update_key(UpdateKey("k", add_credit_usd=bad))
    assert c.keys["k"].credit_micro == 1_000_000


_amounts = st.one_of(st.none(), st.sampled_from(["0", "0.0003", "1", "5.00", "-1", "NaN", "Infinity", "1e30",
                                                 "sNaN", "abc", "1e-9"]),
                     st.decimals(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20))
_tokens = st.one_of(st.integers(-10**12, 10**12), st.sampled_from([0, 1, -1, 10**10, 10**10 + 1]),
                    st.floats(allow_nan=True), st.just("7"))
_counts = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True))
_usage = st.one_of(st.none(), st.builds(
    Usage, input=_counts, cached_input=_counts, cache_write=_counts, output=_counts, reasoning=_counts,
    cost_usd=st.one_of(st.none(), st.sampled_from(["-5", "NaN", "0.01", "1e40", "Infinity", "x", "0"]))))
_ids = st.sampled_from(["r0", "r1", "r2", "r3", "nope"])
_keys = st.sampled_from(["k", "k2", "ghost"])
_ops = st.one_of(
    st.tuples(st.just("create"), _keys, _amounts, st.booleans()),
    st.tuples(st.just("update"), _keys, _amounts, _amounts, st.one_of(st.none(), st.integers(-2, 3))),
    st.tuples(st.just("reserve"), _ids, _keys, _tokens, _tokens,
              st.sampled_from([("p/m",), ("p/m", "p/big"), ("q/unpriced",), ()])),
    st.tuples(st.just("settle"), _ids, _usage, st.booleans(), st.sampled_from([("p", "m"), ("p", "big"), ("q", "x"),
                                                                               (None, None)])),
    st.tuples(st.just("cancel"), _ids),
    st.tuples(st.just("written"), _ids),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ops, max_size=40))
def test_no_sequence_of_messages_mints_credit_or_lowers_spent(ops):
    c = UsageCore({"p/m": PRICE, "p/big": Price(input=Decimal("1e6"), output=Decimal("1e6"))}, wall=lambda: 0.0)
    c.seed_keys([KeySpec("k", Secret("secret-k"))])
    secrets_by_key = {"k": "secret-k", "k2": "secret-k2", "ghost": "secret-ghost"}
    spent = {"k": 0}
    for n, op in enumerate(ops):
        try:
            match op:
                case ("create", name, credit, unlimited):
                    c.create_key(CreateKey(name, credit_usd=credit, key=secrets_by_key[name], unlimited=unlimited))
                case ("update", name, credit, add, conc):
                    c.update_key(UpdateKey(name, credit_usd=credit, add_credit_usd=add,
                                           max_concurrency=conc if conc is None or conc > 0 else conc))
                case ("reserve", rid, name, inp, out, targets):
                    c.reserve(Reserve(rid, secrets_by_key[name], "m", targets, inp, out), float(n))
                case ("settle", rid, usage, no_work, (provider, model)):
                    c.settle(Settle(rid, usage, Provenance.REPORTED, EndReason.END, provider, model,
                                    no_work=no_work), float(n))
                case ("cancel", rid):
                    c.cancel_reserve(rid, float(n))
                case ("written", rid):
                    c.written([rid])
        except E.GatewayError:
            pass
        for name, state in c.keys.items():
            open_holds = [h for h in c.holds.values() if h.key_name == name]
            assert state.held_micro == sum(h.hold_micro for h in open_holds) >= 0
            assert state.in_flight == len(open_holds)
            assert all(0 <= h.hold_micro <= MAX_MICRO for h in open_holds)
            assert state.spent_micro >= spent.get(name, 0), "spent never decreases"
            spent[name] = state.spent_micro
            if state.credit_micro is not None:
                assert state.available() <= state.credit_micro, "available credit never exceeds the credit"
                assert 0 <= state.credit_micro <= MAX_MICRO


def test_a_refusal_after_the_key_was_recognised_names_the_key_for_the_log():
    poor = core(credit_usd=Decimal("0.0001"))
    with pytest.raises(E.OutOfCredit) as caught:
        reserve(poor, "r1")
    assert caught.value.key_name == "k"
    busy = core(max_concurrency=1)
    reserve(busy, "r1")
    with pytest.raises(E.KeyRateLimited) as caught:
        reserve(busy, "r2")
    assert caught.value.key_name == "k"
    with pytest.raises(E.Forbidden) as caught:
        core(models=("other",)).reserve(Reserve("r1", "secret", "m", ("p/m",), 50, 100), 0)
    assert caught.value.key_name == "k"
    with pytest.raises(E.Unauthenticated) as caught:
        core().reserve(Reserve("r1", "wrong", "m", ("p/m",), 50, 100), 0)
    assert caught.value.key_name is None  # a stranger stays unnamed
