"""Decides how long a target, credential or provider rests after a failure.

The upstream's own word comes first (``retry_after`` already parsed from
``retry-after``, ``retry-after-ms``, rate-limit reset headers or Gemini's
``RetryInfo``); otherwise exponential backoff with jitter from config. Scope follows
the failure: a rate limit rests that model on that credential, a quota or server
error rests the credential, an auth failure or permanent quota error kills it, and
server errors from several credentials of one provider in a short window rest the
whole provider (told to routing). A success resets the backoff. A second cooldown
while one is active keeps the later deadline (the credentials actor takes the max).

An upstream's hint is clamped to ``max_retry_after_s``: an hour by default, so a
``Retry-After`` meant as milliseconds, or a broken proxy's, cannot rest a credential
for days. ``/admin/cooldowns`` shows both the wait asked and the one applied.

The log has a ``cooldown started`` line for each rest (a credential, one model on it,
or a whole provider; a dead credential too) and a ``cooldown ended`` line when it is
over: the actor's loop wakes at the next end (``CooldownCore.next_end``), whoever
began the rest -- its own loop or a caller running it inline.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from typing import Any, Callable, Mapping

import attrs
import trio

from actors.base import Actor
from actors.mailbox import Mailbox
from actors.routing import TargetCooling
from protocols import errors as E

log = logging.getLogger("tollhouse.cooldown")

PROVIDER_WINDOW_S = 30.0
PROVIDER_TRIP = 3
HISTORY = 20


@attrs.frozen
class Outcome:
    provider: str
    model: str
    credential_id: str
    error: E.GatewayError | None = None


@attrs.frozen
class Decision:
    """What the dispatcher applies when it releases the lease."""

    kind: str
    scope: str  # "none" | "model" | "credential" | "provider"
    until: float | None = None
    dead: bool = False


@attrs.frozen
class Snapshot:
    pass


@attrs.frozen
class Reconfigure:
    """A reload: new backoff settings, and the credentials that exist (``provider`` ->
    ids). The state of those stays; the rests and streaks of the others are dropped
    (their credentials are gone; the credentials actor holds the rests that count)."""

    base_s: float
    max_s: float
    jitter: float
    max_retry_after_s: float
    credentials: Mapping[str, frozenset] = attrs.field(eq=False)


@attrs.frozen
class Remote:
    """Notice: another instance began this rest (a shared backend); ``until`` on this
    instance's clock. Kept like one begun here, but not shared again."""

    provider: str
    credential: str  # "*": the whole provider
    model: str  # "*": every model
    reason: str
    until: float


Msg = Outcome | Snapshot | Reconfigure | Remote

NONE = Decision("ok", "none")


def classify(error: E.GatewayError | None) -> tuple[str, str]:
    """(kind, scope) for an outcome, by error type."""
    match error:
        case None:
            return "ok", "none"
        case E.UpstreamAuthError():
            return "auth", "dead"
        case E.UpstreamQuotaExhausted():
            return "quota_exhausted", "credential"
        case E.UpstreamRateLimited():
            return "rate_limited", "model"
        case E.UpstreamOverloaded():
            return "overloaded", "credential"
        case E.UpstreamTimeout():
            return "timeout", "credential"
        case E.UpstreamContextTooLong():
            return "context_too_long", "none"
        case E.UpstreamBadRequest():
            return "bad_request", "none"
        case E.UpstreamError():
            return "server_error", "credential"
        case _:
            return "gateway", "none"


class CooldownCore:
    def __init__(self, base_s: float, max_s: float, jitter: float, rng: random.Random | None = None,
                 max_retry_after_s: float = 3600.0) -> None:
        self.base_s = base_s
        self.max_retry_after_s = max_retry_after_s
        self.max_s = max_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures: dict[tuple[str, str], int] = {}
        self.active: dict[tuple[str, str, str], dict] = {}
        self.history: dict[str, deque] = {}
        self.server_errors: dict[str, deque] = {}
        self.errors: dict[tuple[str, str], int] = {}  # (provider, kind) -> upstream errors seen, ever
        self._ends: list[tuple[float, int, tuple, dict]] = []  # heap of (until, n, key, entry) for ``expire``
        self._pushed = 0
        self.started: list[tuple[tuple, dict]] = []  # rests begun since the last ``take_started``

    def reconfigure(self, msg: Reconfigure) -> None:
        self.base_s, self.max_s, self.jitter = msg.base_s, msg.max_s, msg.jitter
        self.max_retry_after_s = msg.max_retry_after_s

        def exists(provider: str, credential: str) -> bool:
            return provider in msg.credentials and (credential == "*" or credential in msg.credentials[provider])

        self.failures = {key: n for key, n in self.failures.items() if exists(*key)}
        self.active = {key: info for key, info in self.active.items() if exists(key[0], key[1])}
        self.server_errors = {p: recent for p, recent in self.server_errors.items() if p in msg.credentials}

    def _rest(self, key: tuple[str, str, str], entry: dict) -> None:
        self.active[key] = entry
        self.started.append((key, entry))
        if entry["until"] is not None:
            self._pushed += 1
            heapq.heappush(self._ends, (entry["until"], self._pushed, key, entry))

    def remote(self, msg: Remote) -> bool:
        """Keep a rest another instance began, unless a later one for its key runs here."""
        key = (msg.provider, msg.credential, msg.model)
        current = self.active.get(key)
        if current is not None and (current["until"] is None or current["until"] >= msg.until):
            return False
        self._rest(key, {"reason": msg.reason, "until": msg.until, "dead": False, "remote": True})
        return True

    def take_started(self) -> list[tuple[tuple, dict]]:
        started, self.started = self.started, []
        return started

    def next_end(self) -> float:
        """When the soonest rest ends (``inf`` when none is timed)."""
        return self._ends[0][0] if self._ends else math.inf

    def expire(self, now: float) -> list[tuple[tuple, dict]]:
        """Remove the rests over by ``now``; returns them (a rest since replaced by a later
        one for the same key is not over)."""
        ended = []
        while self._ends and self._ends[0][0] <= now:
            _, _, key, entry = heapq.heappop(self._ends)
            if self.active.get(key) is entry:
                del self.active[key]
                ended.append((key, entry))
        return ended

    def backoff(self, streak: int) -> float:
        wait = min(self.max_s, self.base_s * (2 ** max(streak - 1, 0)))
        if self.jitter:
            wait *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(wait, self.max_s))

    def outcome(self, o: Outcome, now: float) -> tuple[Decision, list]:
        """The decision, plus notices for other actors (provider-wide rests)."""
        kind, scope = classify(o.error)
        cred_key = (o.provider, o.credential_id)
        if kind == "ok":
            self.failures.pop(cred_key, None)
            return NONE, []
        self.errors[(o.provider, kind)] = self.errors.get((o.provider, kind), 0) + 1
        self._remember(o, kind, now)
        if scope == "none":
            return Decision(kind, "none"), []
        if scope == "dead":
            if o.error is not None and o.error.upstream_status == 403 and o.error.retry_after:
                scope = "credential"
            else:
                self._rest((o.provider, o.credential_id, "*"), {"reason": kind, "until": None, "dead": True})
                return Decision(kind, "credential", None, dead=True), []
        streak = self.failures.get(cred_key, 0) + 1
        self.failures[cred_key] = streak
        asked = o.error.retry_after if o.error is not None else None
        if asked is not None and (not math.isfinite(asked) or asked < 0):
            asked = None  # not a wait: parsed hints are checked already, this guards the rest
        wait = min(asked, self.max_retry_after_s) if asked is not None else self.backoff(streak)
        until = now + wait
        self._rest((o.provider, o.credential_id, o.model if scope == "model" else "*"), {
            "reason": kind, "until": until, "dead": False, "asked_s": asked, "applied_s": wait})
        notices = []
        if kind in ("server_error", "overloaded"):
            notices = self._provider_trip(o, now, until)
        return Decision(kind, scope, until), notices

    def _remember(self, o: Outcome, kind: str, now: float) -> None:
        label = f"{o.provider}/{o.model}"
        self.history.setdefault(label, deque(maxlen=HISTORY)).append(
            {"at": round(now, 3), "credential": o.credential_id, "kind": kind,
             "status": o.error.upstream_status if o.error else None})

    def _provider_trip(self, o: Outcome, now: float, until: float) -> list:
        recent = self.server_errors.setdefault(o.provider, deque(maxlen=32))
        recent.append((now, o.credential_id))
        creds = {c for t, c in recent if t > now - PROVIDER_WINDOW_S}
        if len(creds) >= PROVIDER_TRIP:
            recent.clear()
            self._rest((o.provider, "*", "*"), {"reason": "provider_errors", "until": until, "dead": False,
                                                "applied_s": until - now})
            return [("provider", o.provider, until)]
        return []

    def snapshot(self, now: float) -> dict:
        active = []
        for (provider, cred, model), info in list(self.active.items()):
            if info["until"] is not None and info["until"] <= now:
                del self.active[(provider, cred, model)]
                continue
            scope = "provider" if cred == "*" else ("credential" if model == "*" else "model")
            active.append({
                "provider": provider, "credential": None if cred == "*" else cred,
                "model": None if model == "*" else model, "scope": scope, "reason": info["reason"],
                "dead": info["dead"],
                "remaining_s": None if info["until"] is None else round(info["until"] - now, 3),
                "asked_s": info.get("asked_s"), "applied_s": _rounded(info.get("applied_s")),
                "clamped": info.get("asked_s") is not None and info["asked_s"] > info["applied_s"],
            })
        return {"active": active, "history": {k: list(v) for k, v in self.history.items()},
                "errors": [{"provider": p, "kind": k, "count": n} for (p, k), n in self.errors.items()]}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fields(key: tuple[str, str, str]) -> dict:
    provider, credential, model = key
    scope = "provider" if credential == "*" else ("credential" if model == "*" else "model")
    return {"provider": provider, "credential": None if credential == "*" else credential,
            "model": None if model == "*" else model, "scope": scope}


class CooldownActor(Actor):
    name = "cooldown"

    def __init__(self, core: CooldownCore, notify_routing: Callable[[Any], bool],
                 share: Callable[[tuple, dict, float], None] | None = None) -> None:
        super().__init__()
        self.core = core
        self.notify_routing = notify_routing
        self.share = share  # a shared backend's: told each timed rest begun here (key, entry, now)
        self._wake: trio.CancelScope | None = None  # the loop's wait, moved earlier by a sooner rest

    def handle(self, msg: Msg, now: float):
        self._expire(now)
        match msg:
            case Outcome():
                decision, notices = self.core.outcome(msg, now)
                for _, provider, until in notices:
                    self.notify_routing(TargetCooling(provider, None, until))
                self._log_started(now)
                return decision
            case Remote():
                self.core.remote(msg)
                self._log_started(now)
                return None
            case Snapshot():
                return self.core.snapshot(now)
            case Reconfigure():
                return self.core.reconfigure(msg)
            case _:
                raise TypeError(f"cooldown: unknown message {msg!r}")

    def _log_started(self, now: float) -> None:
        for key, entry in self.core.take_started():
            wait = entry.get("applied_s")
            remote = entry.get("remote", False)
            log.warning("cooldown started", extra={
                **_fields(key), "reason": entry["reason"], "dead": entry["dead"],
                "wait_s": None if wait is None else round(wait, 3), "asked_s": entry.get("asked_s"),
                "elsewhere": remote})
            if self.share is not None and not remote and entry["until"] is not None:
                self.share(key, entry, now)
        if self._wake is not None:
            self._wake.deadline = min(self._wake.deadline, self.core.next_end())

    def _expire(self, now: float) -> None:
        for key, entry in self.core.expire(now):
            log.info("cooldown ended", extra={**_fields(key), "reason": entry["reason"]})

    async def run(self, mailbox: Mailbox) -> None:
        """The base loop, waking also when a rest ends, to say so."""
        receive = mailbox.receive_channel
        while True:
            envelope = None
            with trio.CancelScope(deadline=self.core.next_end()) as self._wake:
                envelope = await receive.receive()  # raises a posted crash's error
            self._wake = None
            if envelope is None:
                self._expire(trio.current_time())
                continue
            try:
                self.dispatch(envelope, trio.current_time())
            finally:
                mailbox.pending -= 1

    def snapshot(self) -> dict:
        return {"active": len(self.core.active), "targets_with_history": len(self.core.history)}
