"""Actors through their mailboxes, and their pure cores with explicit time."""

from __future__ import annotations

import random

import attrs
import pytest
import trio

from actors.base import Actor
from actors.cooldown import CooldownCore, Outcome
from actors.credentials import CredentialsCore, Lease, Leased, NoneAvailable, Release
from actors.routing import RoutingCore
from actors.supervisor import Supervisor
from protocols import errors as E
from protocols.secret import Secret


@attrs.frozen
class Spec:
    id: str
    tier: int = 0
    max_concurrency: int = 2
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    key: Secret = Secret("k")


def _pool(*specs):
    return CredentialsCore({"p": specs})


def test_lru_rotation_within_a_tier_and_tiers_in_order():
    core = _pool(Spec("a"), Spec("b"), Spec("c", tier=1))
    picks = []
    for t in range(4):
        lease = core.lease(Lease("p", "m"), now=float(t))
        picks.append(lease.credential.id)
        core.release(Release(lease.lease_id), now=float(t))
    assert picks == ["a", "b", "a", "b"]


def test_lower_tier_only_when_higher_unavailable():
    core = _pool(Spec("a", max_concurrency=1), Spec("c", tier=1))
    first = core.lease(Lease("p", "m"), 0.0)
    second = core.lease(Lease("p", "m"), 0.0)
    assert (first.credential.id, second.credential.id) == ("a", "c")


def test_cooling_and_dead_credentials_are_skipped():
    core = _pool(Spec("a"), Spec("b"))
    lease = core.lease(Lease("p", "m"), 0.0)
    core.release(Release(lease.lease_id, cool_until=30.0), 0.0)
    assert core.lease(Lease("p", "m"), 1.0).credential.id == "b"
    dead = core.lease(Lease("p", "m", exclude=frozenset({"a"})), 1.0)
    core.release(Release(dead.lease_id, dead=True, reason="auth"), 1.0)
    blocked = core.lease(Lease("p", "m"), 29.0)
    assert isinstance(blocked, NoneAvailable) and blocked.until == 30.0
    assert core.lease(Lease("p", "m"), 30.0).credential.id == "a"
    core.enable("p", "b", 31.0)
    assert {core.lease(Lease("p", "m"), 32.0).credential.id for _ in range(2)} == {"a", "b"}


def test_requests_per_minute_window():
    core = _pool(Spec("a", requests_per_minute=2, max_concurrency=10))
    for _ in range(2):
        assert isinstance(core.lease(Lease("p", "m"), 0.0), Leased)
    blocked = core.lease(Lease("p", "m"), 10.0)
    assert isinstance(blocked, NoneAvailable) and blocked.until == 60.0
    assert isinstance(core.lease(Lease("p", "m"), 60.0), Leased)


def test_cooldown_prefers_retry_after_then_backoff_and_resets():
    core = CooldownCore(base_s=1.0, max_s=60.0, jitter=0.0, rng=random.Random(1))
    limited = E.UpstreamRateLimited("slow down", retry_after=30.0, upstream_status=429)
    decision, _ = core.outcome(Outcome("p", "m", "a", limited), now=100.0)
    assert (decision.scope, decision.until) == ("model", 130.0)
    server = E.UpstreamServerError("boom", upstream_status=500)
    waits = [core.outcome(Outcome("p", "m", "b", server), now=0.0)[0].until for _ in range(3)]
    assert waits == [1.0, 2.0, 4.0]
    core.outcome(Outcome("p", "m", "b"), now=0.0)
    assert core.outcome(Outcome("p", "m", "b", server), now=0.0)[0].until == 1.0


def test_auth_failure_kills_and_bad_request_does_nothing():
    core = CooldownCore(1.0, 60.0, 0.0)
    assert core.outcome(Outcome("p", "m", "a", E.UpstreamAuthError("no", upstream_status=401)), 0.0)[0].dead
    assert core.outcome(Outcome("p", "m", "a", E.UpstreamBadRequest("bad", upstream_status=400)), 0.0)[0].scope == "none"


def test_server_errors_across_keys_trip_the_provider():
    core = CooldownCore(1.0, 60.0, 0.0)
    notices = [core.outcome(Outcome("p", "m", c, E.UpstreamServerError("x")), 0.0)[1] for c in "abc"]
    assert notices[:2] == [[], []] and notices[2][0][:2] == ("provider", "p")


def test_routing_alias_direct_and_catch_all():
    @attrs.frozen
    class M:
        targets: tuple
        hold_output_tokens: int | None = None

    core = RoutingCore({"demo": M(("p/x", "q/y")), "*": M(("p/any",))}, {"alias": "demo"}, ["p", "q"],
                       priced=lambda label: label.startswith("q/"))
    assert [t.label for t in core.resolve("alias", 0).targets] == ["p/x", "q/y"]
    assert [t.label for t in core.resolve("q/direct", 0).targets] == ["q/direct"]
    with pytest.raises(E.NotFound, match="no price"):
        core.resolve("p/unpriced", 0)
    assert [t.label for t in core.resolve("whatever", 0).targets] == ["p/any"]
    core.cooling[("p", None)] = 10.0
    assert [t.label for t in core.resolve("demo", 5).targets] == ["q/y", "p/x"]
    assert [t.label for t in core.resolve("demo", 11).targets] == ["p/x", "q/y"]
    del core.models["*"]
    with pytest.raises(E.NotFound):
        core.resolve("whatever", 0)


class Fragile(Actor):
    name = "fragile"

    def handle(self, msg, now):
        if msg == "crash":
            raise RuntimeError("boom")
        return msg * 2


async def test_supervisor_restarts_a_crashed_actor_and_counts_it():
    sup = Supervisor(restart_backoff=0)
    mailbox = sup.add("fragile", Fragile, capacity=4, ask_timeout=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert await mailbox.ask(2) == 4
            with pytest.raises(E.GatewayFailure):
                await mailbox.ask("crash")
            assert await mailbox.ask(5) == 10
            snap = sup.snapshot()["fragile"]
            assert snap["restarts"] == 1 and "boom" in snap["last_crash"] and snap["handled"] == 2
            nursery.cancel_scope.cancel()


async def test_ask_times_out_when_the_actor_never_answers(autojump_clock):
    sup = Supervisor()
    mailbox = sup.add("idle", Fragile, capacity=1, ask_timeout=3)
    with pytest.raises(trio.TooSlowError):
        await mailbox.ask(1)  # no supervisor running: nobody reads the inbox


class Recorder(Actor):
    name = "recorder"

    def __init__(self):
        super().__init__()
        self.seen = []

    def handle(self, msg, now):
        self.seen.append(msg)
        return list(self.seen)


async def test_inline_asks_never_overtake_queued_messages():
    sup = Supervisor(restart_backoff=0)
    mailbox = sup.add("recorder", Recorder, capacity=8, ask_timeout=1)
    assert mailbox.tell_nowait("queued-before-start")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert await mailbox.ask("second") == ["queued-before-start", "second"]
            assert mailbox.pending == 0
            assert await mailbox.ask("third") == ["queued-before-start", "second", "third"]
            assert sup.snapshot()["recorder"]["handled"] == 3
            nursery.cancel_scope.cancel()


def test_tokens_per_minute_window_counts_input_at_lease_and_output_at_release():
    core = _pool(Spec("a", tokens_per_minute=100, max_concurrency=10))
    lease = core.lease(Lease("p", "m", tokens=60), 0.0)
    core.release(Release(lease.lease_id, tokens=50), 1.0)
    blocked = core.lease(Lease("p", "m", tokens=1), 2.0)
    assert isinstance(blocked, NoneAvailable) and blocked.reason == "tokens_per_minute" and blocked.until == 60.0
    assert isinstance(core.lease(Lease("p", "m", tokens=1), 61.0), Leased)
