"""The pure cores' part in the shared backend, without I/O: a lease the shared
backend refused, a rest received from another instance."""

from __future__ import annotations

import attrs

from actors.cooldown import CooldownActor, CooldownCore, Outcome, Remote
from actors.credentials import Cool, CredentialsCore, Lease, Leased, NoneAvailable, Refused
from protocols import errors as E
from protocols.secret import Secret


@attrs.frozen
class Spec:
    id: str
    key: Secret = Secret("k")
    tier: int = 0
    max_concurrency: int = 4
    requests_per_minute: int | None = 2
    tokens_per_minute: int | None = None


def _pool() -> CredentialsCore:
    return CredentialsCore({"p": [Spec("a"), Spec("b")]})


def test_a_refused_lease_is_given_back_uncounted_and_skipped_until_its_window_has_room():
    core = _pool()
    first = core.lease(Lease("p", "m", tokens=5), now=0.0)
    assert isinstance(first, Leased) and first.credential.id == "a" and first.spec.id == "a"
    core.refused(Refused(first.lease_id, until=10.0, reason="requests_per_minute"))
    a = core.pools["p"][0]
    assert (a.in_flight, len(a.requests), a.leases) == (0, 0, 0), "nothing of the refused lease stays counted"
    assert core.lease(Lease("p", "m"), now=1.0).credential.id == "b"
    assert core.lease(Lease("p", "m", exclude=frozenset({"b"})), now=2.0) == NoneAvailable(
        "p", 10.0, "requests_per_minute")
    assert core.lease(Lease("p", "m", exclude=frozenset({"b"})), now=10.0).credential.id == "a"


def test_a_busy_refusal_blocks_nothing_later():
    core = _pool()
    first = core.lease(Lease("p", "m"), now=0.0)
    core.refused(Refused(first.lease_id, until=None, reason="busy"))
    assert core.lease(Lease("p", "m"), now=0.0).credential.id in ("a", "b")
    assert core.pools["p"][0].shared_block is None


def test_a_rest_from_elsewhere_cools_the_credential_here():
    core = _pool()
    core.cool(Cool("p", "a", "m", until=30.0))
    assert core.lease(Lease("p", "m"), now=1.0).credential.id == "b"
    assert core.lease(Lease("p", "other-model"), now=1.0).credential.id == "a"


def test_a_remote_rest_is_kept_and_logged_but_not_shared_again():
    shared: list = []
    actor = CooldownActor(CooldownCore(5, 60, 0), lambda notice: True, share=lambda *a: shared.append(a))
    actor.handle(Remote("p", "a", "m", "rate_limited", until=30.0), now=0.0)
    assert shared == []
    assert [(c["credential"], c["remaining_s"]) for c in actor.core.snapshot(0.0)["active"]] == [("a", 30.0)]
    actor.handle(Remote("p", "a", "m", "rate_limited", until=20.0), now=0.0)  # an earlier end changes nothing
    assert actor.core.snapshot(0.0)["active"][0]["remaining_s"] == 30.0
    actor.handle(Outcome("p", "m", "b", E.UpstreamRateLimited("slow down", retry_after=7)), now=0.0)
    [(key, entry, now)] = shared
    assert key == ("p", "b", "m") and entry["until"] == 7.0 and now == 0.0
