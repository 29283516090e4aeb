"""Per-provider credential pools: who may call the upstream next.

Selection: the lowest tier that has a usable credential; inside a tier, the least
recently leased. A credential is unusable while it is dead (refused by the upstream
as unauthorised or permanently out of quota, until an admin re-enables it), cooling
(until a deadline), at its concurrency limit, or over its requests/tokens per-minute
window. Every lease is released exactly once; a release may carry a cooldown or a
death sentence decided by the cooldown actor.

A reload's ``Reconfigure`` replaces the pools by credential id: a credential kept
keeps its state (cooldowns, windows, leases in flight) under its new limits -- a new
secret also lifts a death sentence, which was about the old one; a new one starts
fresh; a removed one takes no new lease and is forgotten once its leases in flight
are released. A lease for a provider no pool has (removed by a reload while a request
of the old config waited) finds nothing available.

Specs are duck-typed: anything with ``id``, ``key`` (a Secret), ``tier``,
``max_concurrency``, ``requests_per_minute`` and ``tokens_per_minute``.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Iterable, Mapping

import attrs

from actors.base import Actor
from protocols.errors import NotFound
from protocols.secret import Secret

WINDOW_S = 60.0


@attrs.frozen
class Credential:
    """What a lease hands the provider: the id (for logs/admin) and the secret."""

    provider: str
    id: str
    secret: Secret


@attrs.frozen
class Lease:
    """Ask: a credential of ``provider`` not in ``exclude`` (ids tried this request)."""

    provider: str
    model: str
    exclude: frozenset = frozenset()
    tokens: int = 0


@attrs.frozen
class Leased:
    lease_id: int
    credential: Credential
    spec: Any = attrs.field(default=None, eq=False, repr=False)  # its limits, for a shared backend's check
    shared: str | None = None  # the lease's id in the shared backend, once confirmed there


@attrs.frozen
class NoneAvailable:
    """No credential can be used now; ``until`` is when the soonest one frees up."""

    provider: str
    until: float | None
    reason: str


@attrs.frozen
class Release:
    """End of a lease. ``tokens``: what the call produced, added to the credential's
    tokens-per-minute window (its input was counted when leased)."""

    lease_id: int
    tokens: int = 0
    cool_until: float | None = None
    cool_model: str | None = None
    dead: bool = False
    reason: str | None = None


@attrs.frozen
class Refused:
    """A lease the shared backend refused (the credential is at its limit across
    instances): given back uncounted; the credential is skipped here until ``until``
    (None: only this time, a concurrency slot may free up any moment)."""

    lease_id: int
    until: float | None
    reason: str


@attrs.frozen
class Enable:
    provider: str
    credential_id: str


@attrs.frozen
class Snapshot:
    pass


@attrs.frozen
class Reconfigure:
    """A reload's pools: provider -> credential specs."""

    pools: Mapping[str, tuple] = attrs.field(eq=False, repr=False)


@attrs.frozen
class Cool:
    """Notice: rest this credential (one model on it, when ``model`` is set) until
    ``until`` -- a rest another instance of a shared backend began."""

    provider: str
    credential_id: str
    model: str | None
    until: float


Msg = Lease | Release | Refused | Enable | Snapshot | Reconfigure | Cool


@attrs.define
class CredentialState:
    spec: Any
    provider: str
    in_flight: int = 0
    last_used: float = float("-inf")
    last_order: int = -1  # lease sequence number: LRU order even when leases share a timestamp
    cool_until: float = 0.0
    model_cool: dict = attrs.field(factory=dict)
    dead: bool = False
    dead_reason: str | None = None
    requests: deque = attrs.field(factory=deque)
    tokens: deque = attrs.field(factory=deque)
    leases: int = 0
    shared_block: tuple | None = None  # (until, reason): full across instances, as the shared backend said

    def blocked_until(self, model: str, now: float) -> tuple[float | None, str | None]:
        """(None, None) if usable now; else when it could be, and why."""
        if self.dead:
            return float("inf"), "dead"
        until = max(self.cool_until, self.model_cool.get(model, 0.0))
        if until > now:
            return until, "cooling"
        if self.in_flight >= self.spec.max_concurrency:
            return None, "busy"
        if self.shared_block is not None:
            if self.shared_block[0] > now:
                return self.shared_block
            self.shared_block = None
        self._trim(now)
        rpm = self.spec.requests_per_minute
        if rpm is not None and len(self.requests) >= rpm:
            return self.requests[0] + WINDOW_S, "requests_per_minute"
        tpm = self.spec.tokens_per_minute
        if tpm is not None and sum(n for _, n in self.tokens) >= tpm:
            return self.tokens[0][0] + WINDOW_S, "tokens_per_minute"
        return None, None

    def rest(self, until: float, model: str | None) -> None:
        """Cool until ``until`` (one model, when given); a later rest already set stays."""
        if model is not None:
            self.model_cool[model] = max(self.model_cool.get(model, 0.0), until)
        else:
            self.cool_until = max(self.cool_until, until)

    def _trim(self, now: float) -> None:
        while self.requests and self.requests[0] + WINDOW_S <= now:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] + WINDOW_S <= now:
            self.tokens.popleft()


class CredentialsCore:
    def __init__(self, pools: Mapping[str, Iterable[Any]]) -> None:
        self.pools: dict[str, list[CredentialState]] = {
            provider: [CredentialState(spec, provider) for spec in specs] for provider, specs in pools.items()
        }
        self.leases: dict[int, CredentialState] = {}
        self.counted: dict[int, tuple[float, int]] = {}  # lease -> (time, input tokens) it put in the windows
        self.retiring: list[CredentialState] = []  # removed by a reload, leases still in flight
        self._ids = itertools.count(1)

    def reconfigure(self, pools: Mapping[str, Iterable[Any]]) -> dict:
        """New pools by credential id, keeping the state of the credentials that stay."""
        kept: list[str] = []
        added: list[str] = []
        removed: list[CredentialState] = []
        new: dict[str, list[CredentialState]] = {}
        for provider, specs in pools.items():
            old = {state.spec.id: state for state in self.pools.get(provider, [])}
            states = []
            for spec in specs:
                state = old.pop(spec.id, None)
                if state is None:
                    state = CredentialState(spec, provider)
                    added.append(f"{provider}/{spec.id}")
                else:
                    if state.spec.key != spec.key:
                        state.dead, state.dead_reason = False, None
                    state.spec = spec
                    kept.append(f"{provider}/{spec.id}")
                states.append(state)
            new[provider] = states
            removed.extend(old.values())
        for provider, states in self.pools.items():
            if provider not in pools:
                removed.extend(states)
        self.pools = new
        self.retiring.extend(state for state in removed if state.in_flight > 0)
        return {"kept": kept, "added": added, "removed": [f"{s.provider}/{s.spec.id}" for s in removed]}

    def lease(self, msg: Lease, now: float) -> Leased | NoneAvailable:
        pool = self.pools.get(msg.provider)
        if pool is None:
            return NoneAvailable(msg.provider, None, "provider not configured")
        best: CredentialState | None = None
        soonest: float | None = None
        reasons = set()
        for state in pool:
            if state.spec.id in msg.exclude:
                continue
            until, why = state.blocked_until(msg.model, now)
            if why is None:
                if best is None or (state.spec.tier, state.last_order) < (best.spec.tier, best.last_order):
                    best = state
                continue
            reasons.add(why)
            if until is not None and until != float("inf"):
                soonest = until if soonest is None else min(soonest, until)
        if best is None:
            reason = "all credentials tried" if not reasons else ",".join(sorted(reasons))
            return NoneAvailable(msg.provider, soonest, reason)
        best.in_flight += 1
        best.leases += 1
        best.last_used = now
        lease_id = next(self._ids)
        best.last_order = lease_id
        best.requests.append(now)
        if msg.tokens:
            best.tokens.append((now, msg.tokens))
        self.leases[lease_id] = best
        self.counted[lease_id] = (now, msg.tokens)
        return Leased(lease_id, Credential(msg.provider, best.spec.id, best.spec.key), best.spec)

    def refused(self, msg: Refused) -> None:
        state = self.leases.get(msg.lease_id)
        if state is None:
            return
        at, tokens = self.counted.pop(msg.lease_id, (None, 0))
        self.release(Release(msg.lease_id), 0.0)
        if at is not None:
            if at in state.requests:
                state.requests.remove(at)
            if tokens and (at, tokens) in state.tokens:
                state.tokens.remove((at, tokens))
        state.leases -= 1
        if msg.until is not None:
            state.shared_block = (msg.until, msg.reason)

    def release(self, msg: Release, now: float) -> None:
        state = self.leases.pop(msg.lease_id, None)
        if state is None:
            return
        self.counted.pop(msg.lease_id, None)
        state.in_flight -= 1
        if state.in_flight == 0 and self.retiring:
            self.retiring = [s for s in self.retiring if s is not state]  # by identity: states compare by value
        if msg.tokens:
            state.tokens.append((now, msg.tokens))
        if msg.dead:
            state.dead = True
            state.dead_reason = msg.reason
        if msg.cool_until is not None:
            state.rest(msg.cool_until, msg.cool_model)

    def cool(self, msg: Cool) -> None:
        for state in self.pools.get(msg.provider, []):
            if state.spec.id == msg.credential_id:
                state.rest(msg.until, msg.model)

    def enable(self, provider: str, credential_id: str, now: float) -> dict:
        for state in self.pools.get(provider, []):
            if state.spec.id == credential_id:
                state.dead = False
                state.dead_reason = None
                state.cool_until = 0.0
                state.model_cool.clear()
                return self.describe(state, now)
        raise NotFound(f"no credential {credential_id!r} in provider {provider!r}")

    def describe(self, state: CredentialState, now: float) -> dict:
        until, why = state.blocked_until("", now)
        return {
            "id": state.spec.id,
            "tier": state.spec.tier,
            "state": "dead" if state.dead else ("cooling" if why == "cooling" else (why or "ready")),
            "dead_reason": state.dead_reason,
            "cooling_for_s": round(until - now, 3) if why == "cooling" and until is not None else None,
            "model_cooldowns": {m: round(u - now, 3) for m, u in state.model_cool.items() if u > now},
            "in_flight": state.in_flight,
            "max_concurrency": state.spec.max_concurrency,
            "requests_last_minute": len(state.requests),
            "tokens_last_minute": sum(n for _, n in state.tokens),
            "requests_per_minute": state.spec.requests_per_minute,
            "tokens_per_minute": state.spec.tokens_per_minute,
            "leases_total": state.leases,
        }

    def snapshot(self, now: float) -> dict:
        view = {p: [self.describe(s, now) for s in pool] for p, pool in self.pools.items()}
        for state in self.retiring:
            view.setdefault(state.provider, []).append({**self.describe(state, now), "state": "retiring"})
        return view


class CredentialsActor(Actor):
    name = "credentials"

    def __init__(self, core: CredentialsCore) -> None:
        super().__init__()
        self.core = core
        self._now = 0.0

    def handle(self, msg: Msg, now: float):
        self._now = now
        match msg:
            case Lease():
                return self.core.lease(msg, now)
            case Release():
                return self.core.release(msg, now)
            case Refused():
                return self.core.refused(msg)
            case Enable(provider, credential_id):
                return self.core.enable(provider, credential_id, now)
            case Snapshot():
                return self.core.snapshot(now)
            case Reconfigure(pools):
                return self.core.reconfigure(pools)
            case Cool():
                return self.core.cool(msg)
            case _:
                raise TypeError(f"credentials: unknown message {msg!r}")

    def snapshot(self) -> dict:
        pools = self.core.pools
        return {
            "providers": len(pools),
            "credentials": sum(len(p) for p in pools.values()),
            "leases_open": len(self.core.leases),
            "retiring": len(self.core.retiring),
            "dead": sum(s.dead for p in pools.values() for s in p),
        }
