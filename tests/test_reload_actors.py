"""What a reload's ``Reconfigure`` keeps and drops in each actor's core (explicit time)."""

from __future__ import annotations

from decimal import Decimal

import attrs

from actors import routing
from actors.cooldown import CooldownCore, Outcome, Reconfigure as CooldownReconfigure
from actors.credentials import CredentialsCore, Lease, NoneAvailable, Release
from actors.usage import Reconfigure as UsageReconfigure, Reserve, Settle
from actors.usage_core import UsageCore
from protocols import errors as E
from protocols.money import Price
from protocols.secret import Secret
from protocols.unified import EndReason, Provenance, Usage
from tests.test_usage_core import KeySpec


@attrs.frozen
class Spec:
    id: str
    tier: int = 0
    max_concurrency: int = 2
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    key: Secret = Secret("k")


def test_a_kept_credential_keeps_its_cooldown_and_window_under_its_new_limits():
    core = CredentialsCore({"p": [Spec("a", requests_per_minute=5), Spec("b")]})
    lease = core.lease(Lease("p", "m"), 0.0)
    core.release(Release(lease.lease_id, cool_until=30.0), 0.0)
    changes = core.reconfigure({"p": [Spec("a", requests_per_minute=1), Spec("c")]})
    assert changes == {"kept": ["p/a"], "added": ["p/c"], "removed": ["p/b"]}
    assert core.lease(Lease("p", "m", exclude=frozenset({"c"})), 10.0).__class__ is NoneAvailable  # still cooling
    a = core.pools["p"][0]
    assert len(a.requests) == 1 and a.spec.requests_per_minute == 1
    blocked = core.lease(Lease("p", "m", exclude=frozenset({"c"})), 31.0)
    assert isinstance(blocked, NoneAvailable) and blocked.reason == "requests_per_minute"  # the kept window


def test_a_new_secret_lifts_a_death_sentence_and_the_same_one_does_not():
    core = CredentialsCore({"p": [Spec("a")]})
    lease = core.lease(Lease("p", "m"), 0.0)
    core.release(Release(lease.lease_id, dead=True, reason="auth"), 0.0)
    core.reconfigure({"p": [Spec("a", max_concurrency=3)]})
    assert core.pools["p"][0].dead
    core.reconfigure({"p": [Spec("a", key=Secret("rotated"))]})
    assert core.lease(Lease("p", "m"), 1.0).credential.secret == Secret("rotated")


def test_a_removed_credential_finishes_its_leases_then_disappears():
    core = CredentialsCore({"p": [Spec("a")], "q": [Spec("z")]})
    lease = core.lease(Lease("p", "m"), 0.0)
    core.reconfigure({"p": [Spec("b")]})
    assert [(c["id"], c["state"], c["in_flight"]) for c in core.snapshot(1.0)["p"]] == [
        ("b", "ready", 0), ("a", "retiring", 1)]
    assert core.lease(Lease("p", "m", exclude=frozenset({"b"})), 1.0).reason == "all credentials tried"
    assert core.lease(Lease("q", "m"), 1.0).reason == "provider not configured"
    core.release(Release(lease.lease_id, tokens=5), 2.0)
    assert [c["id"] for c in core.snapshot(2.0)["p"]] == ["b"] and "q" not in core.snapshot(2.0)


def test_routing_keeps_the_cooling_of_providers_that_stay_and_resolves_by_the_requests_table():
    @attrs.frozen
    class M:
        targets: tuple
        hold_output_tokens: int | None = None

    core = routing.RoutingCore({"m": M(("p/x", "q/y"))}, {}, ["p", "q"], priced=lambda _: True)
    old = core.table
    core.cooling = {("p", None): 50.0, ("q", None): 50.0}
    new = routing.Table.build({"m": M(("q/y", "p/x", "r/z"))}, {"n": "m"}, ["p", "r"], priced=lambda _: True)
    core.reconfigure(new)
    assert core.cooling == {("p", None): 50.0}
    assert [t.label for t in core.resolve("m", 10.0).targets] == ["q/y", "r/z", "p/x"]
    assert [t.label for t in core.resolve("m", 10.0, old).targets] == ["q/y", "p/x"]  # a request of the old one
    assert core.model_names() == ["m", "n"]


def test_cooldown_drops_the_rests_of_removed_credentials_and_takes_new_backoff():
    core = CooldownCore(1.0, 300.0, 0.0)
    for cred in ("a", "b"):
        core.outcome(Outcome("p", "m", cred, E.UpstreamOverloaded("busy")), 0.0)
    core.reconfigure(CooldownReconfigure(10.0, 60.0, 0.0, 3600.0, {"p": frozenset({"a"})}))
    assert {key[1] for key in core.active} == {"a"} and set(core.failures) == {("p", "a")}
    decision, _ = core.outcome(Outcome("p", "m", "a", E.UpstreamOverloaded("busy")), 1.0)
    assert decision.until == 1.0 + 20.0  # the kept streak (2) at the new base


def test_a_reservation_settles_at_the_price_of_its_generation():
    core = UsageCore({"p/m": Price(input=Decimal("1"), output=Decimal("2"))}, wall=lambda: 0.0)
    core.seed_keys([KeySpec("k", Secret("secret"))])
    old_prices = dict(core.pricing)
    core.reserve(Reserve("r1", "secret", "m", ("p/m",), 50, 100, old_prices), 0.0)
    created, ops = core.reconfigure(UsageReconfigure({"p/m": Price(input=Decimal("100"), output=Decimal("200"))},
                                                     (KeySpec("k", Secret("other"), credit_usd=Decimal("9")),
                                                      KeySpec("new", Secret("fresh")))))
    assert created == ["new"] and [op[0] for op in ops] == ["put_key"]
    assert core.keys["k"].credit_micro == 1_000_000  # the ledger's key stays as it is
    core.reserve(Reserve("r2", "secret", "m", ("p/m",), 50, 100, dict(core.pricing)), 0.0)
    used = Usage(input=10, output=5)
    first, _ = core.settle(Settle("r1", used, Provenance.REPORTED, EndReason.END, provider="p", model="m"), 1.0)
    second, _ = core.settle(Settle("r2", used, Provenance.REPORTED, EndReason.END, provider="p", model="m"), 1.0)
    assert (first.charged_micro, second.charged_micro) == (20, 2000)
