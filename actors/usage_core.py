"""The meter's state and rules, synchronous and clock-free: keys, holds, settlements.

Each handler returns its answer and the ledger operations it implies; nothing here
touches the disk, so every rule is tested without trio or SQLite.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Iterable, Mapping


from actors.usage_messages import (
    UNCHANGED,
    AllowedModels,
    Authenticate,
    CreateKey,
    Msg,
    Query,
    Reconfigure,
    Reservation,
    Reserve,
    RevokeKey,
    Settle,
    Settled,
    UpdateKey,
    hash_key,
)
from protocols.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    KeyRateLimited,
    NotFound,
    OutOfCredit,
    Unauthenticated,
)
from actors.key_terms import ADJECTIVES, Budget, format_utc, period_end, period_start
from actors.usage_bounds import MAX_MICRO, amount, clean_usage, hold_tokens, micro
from protocols.money import Price, cost_micro_usd, to_micro, usd
from protocols.unified import EndReason, Provenance, Usage
from actors.usage_keys import DEFAULT_WINDOW_S, SETTINGS, Hold, KeySettings, KeyState, key_state


UNKNOWN_KEY = "Invalid API key: the gateway key is missing or unknown."


def reservation_view(request_id: str, key: str, model: str | None, hold_micro: int, created_at: float,
                     status: str, wall: float) -> dict:
    """One reservation as ``/admin/reservations`` lists it."""
    return {"request_id": request_id, "key": key, "model": model, "hold_usd": usd(hold_micro),
            "age_s": round(wall - created_at, 3), "status": status}


class UsageCore:
    def __init__(self, pricing: Mapping[str, Price], wall=time.time, count_requests: bool = True) -> None:
        self.pricing = dict(pricing)
        self.wall = wall
        # whether a key's requests_per_minute is counted here (False: a caller counts it
        # in a shared window before the reserve, see ``actors/usage_shared.py``)
        self.count_requests = count_requests
        self.keys: dict[str, KeyState] = {}
        self.by_hash: dict[str, KeyState] = {}
        self.holds: dict[str, Hold] = {}
        self.settling: dict[str, Hold] = {}  # settled in memory, not yet on disk
        self._hashes: dict[str, str] = {}
        self.settled: dict[str, Settled] = {}
        self.totals = {"requests": 0, "charged_micro": 0, "overrun_micro": 0}

    # -- state loading

    def load(self, keys: Iterable[dict], holds: Iterable[dict]) -> None:
        for k in keys:
            state = key_state(k)
            self._index(state)
        for h in holds:
            hold = Hold(h["id"], h["key_name"], h["model"] or "", h["hold_micro"], h["created_at"], h["provider"], h["model"])
            self.holds[hold.id] = hold
            holder = self.keys.get(hold.key_name)
            if holder is not None:
                holder.held_micro += hold.hold_micro
                holder.in_flight += 1
                budget = holder.budget
                if budget is not None and period_start(budget.period, hold.created_at) == holder.budget_start:
                    hold.budget_mark = holder.budget_mark()
                    holder.budget_held_micro += hold.hold_micro

    def index(self, state: KeyState) -> None:
        """Take ``state`` as the key's record (a shared backend's fresh read of it)."""
        self._index(state)

    def _index(self, state: KeyState) -> None:
        old = self.keys.get(state.name)
        if old is not None:
            self.by_hash.pop(old.key_hash, None)
        self.keys[state.name] = state
        self.by_hash[state.key_hash] = state

    def seed_keys(self, specs: Iterable[Any]) -> list:
        """Keys from the config are created once; afterwards the ledger owns them. A new
        config key whose secret another key already has (one made through the admin API,
        or a revoked one) is refused by its path before any key is created."""
        fresh = [(index, spec) for index, spec in enumerate(specs) if spec.name not in self.keys]
        for index, spec in fresh:  # every check before any change
            owner = self.by_hash.get(hash_key(spec.key.value))
            if owner is not None:
                raise InvalidRequest(
                    f"keys[{index}].key: the config key {spec.name!r} has the secret of the ledger's key "
                    f"{owner.name!r}{' (revoked)' if owner.revoked_at is not None else ''}; a secret belongs to "
                    f"one key for good: give {spec.name!r} a new one", param=f"keys[{index}].key")
        ops = []
        for _, spec in fresh:
            credit = None if spec.credit_usd is None else to_micro(spec.credit_usd)
            state = KeyState(spec.name, hash_key(spec.key.value), credit, models=spec.models, created_at=self.wall(),
                             requests_per_minute=spec.requests_per_minute, max_concurrency=spec.max_concurrency,
                             expires_at=getattr(spec, "expires_at", None),
                             budget=Budget.of(getattr(spec, "budget", None)),
                             requests_window_s=getattr(spec, "requests_window_s", DEFAULT_WINDOW_S))
            state.roll(state.created_at)
            self._index(state)
            ops.append(("put_key", state.row()))
        return ops

    def price(self, label: str, pricing: Mapping[str, Price] | None = None) -> Price | None:
        """The label's own price, else its provider's ``provider/*``; None: unpriced.
        A free target is an explicit zero price, never a missing one. ``pricing``: a
        request's own table (the generation it started on), else the current one."""
        table = self.pricing if pricing is None else pricing
        price = table.get(label)
        if price is None:
            price = table.get(label.partition("/")[0] + "/*")
        return price

    def reconfigure(self, msg: Reconfigure) -> tuple[list[str], list]:
        """New prices for requests reserved from now on; keys new to the meter created
        as at start (the ones it knows stay as the ledger has them)."""
        ops = self.seed_keys(msg.key_specs)  # may refuse the reload: before anything changed
        self.pricing = dict(msg.pricing)
        return [op[1]["name"] for op in ops], ops

    def forget_keys(self, names: Iterable[str]) -> None:
        """Undo the creation of keys whose write the ledger refused."""
        for name in names:
            state = self.keys.pop(name, None)
            if state is not None:
                self.by_hash.pop(state.key_hash, None)

    # -- messages

    def key_hash(self, key: str) -> str:
        """sha256 of a presented key, remembered for the keys seen recently."""
        digest = self._hashes.get(key)
        if digest is None:
            if len(self._hashes) >= 4096:
                self._hashes.clear()
            digest = self._hashes[key] = hash_key(key)
        return digest

    def authenticate(self, key: str, model: str | None) -> KeyState:
        state = self.by_hash.get(self.key_hash(key)) if key else None
        if state is None:
            raise Unauthenticated(UNKNOWN_KEY)
        if state.revoked_at is not None:
            raise Unauthenticated("This gateway key has been revoked.")
        if state.disabled:
            raise Unauthenticated("This gateway key is disabled.")
        if state.expires_at is not None and self.wall() >= state.expires_at:
            raise Unauthenticated(f"This gateway key expired at {format_utc(state.expires_at)}.")
        if model is not None and state.models is not None and model not in state.models:
            raise Forbidden(f"This gateway key may not use the model '{model}'.", param="model")
        return state

    def reserve(self, msg: Reserve, now: float) -> tuple[Reservation, list]:
        try:
            return self._reserve(msg, now)
        except GatewayError as err:
            state = self.by_hash.get(self.key_hash(msg.key)) if msg.key else None
            err.key_name = state.name if state is not None else None  # the log names who was refused
            raise

    def _reserve(self, msg: Reserve, now: float) -> tuple[Reservation, list]:
        state = self.authenticate(msg.key, msg.client_model)
        if msg.request_id in self.holds or msg.request_id in self.settled:
            raise InvalidRequest(f"duplicate request id {msg.request_id}")
        estimate = Usage(input=hold_tokens(msg.input_tokens, "input_tokens"),
                         output=hold_tokens(msg.output_tokens, "output_tokens"))
        prices = [self.price(t, msg.pricing) for t in msg.targets]
        unpriced = [t for t, p in zip(msg.targets, prices) if p is None]
        if unpriced:
            raise Forbidden(f"The model '{msg.client_model}' is not served: no price is configured for "
                            f"{', '.join(unpriced)}.", param="model")
        state.check_limits(now, rate=self.count_requests)
        hold = micro(max((cost_micro_usd(estimate, p)[0] for p in prices), default=0))  # type: ignore[arg-type]
        available = state.available()
        if available is not None and (hold > available or available <= 0):
            raise OutOfCredit(
                f"Insufficient credit: this request may cost up to ${usd(hold)} and the key has "
                f"${usd(max(available, 0))} available.")
        wall = self.wall()
        state.roll(wall)
        budget, budget_left = state.budget, state.budget_available()
        if budget is not None and budget_left is not None and (hold > budget_left or budget_left <= 0):
            resets = period_end(budget.period, wall)
            raise KeyRateLimited(
                f"This gateway key's {ADJECTIVES[budget.period]} budget of ${usd(budget.limit_micro)} "
                f"is used up for now: this request may cost up to ${usd(hold)} and "
                f"${usd(max(budget_left, 0))} is left until {format_utc(resets)}.", retry_after=resets - wall)
        state.held_micro += hold
        state.in_flight += 1
        if state.requests_per_minute is not None and self.count_requests:
            state.recent.append(now)
        h = Hold(msg.request_id, state.name, msg.client_model, hold, wall, pricing=msg.pricing,
                 budget_mark=state.budget_mark())
        if h.budget_mark is not None:
            state.budget_held_micro += hold
        self.holds[h.id] = h
        op = ("hold", {"id": h.id, "key_name": h.key_name, "provider": None, "model": msg.client_model,
                       "hold_micro": hold, "created_at": h.created_at,
                       "budget_start": None if h.budget_mark is None else h.budget_mark[1]})
        return Reservation(h.id, state.name, hold), [op]

    def cancel_reserve(self, request_id: str, now: float) -> None:
        """Undo a reserve whose write the ledger refused: nothing stays held for it."""
        hold = self.holds.pop(request_id, None)
        if hold is None:
            return
        state = self.keys.get(hold.key_name)
        if state is not None:
            state.held_micro -= hold.hold_micro
            state.in_flight -= 1
            if hold.budget_mark is not None and hold.budget_mark == state.budget_mark():
                state.budget_held_micro -= hold.hold_micro
            if state.recent and state.recent[-1] == now:
                state.recent.pop()

    def written(self, request_ids: Iterable[str]) -> None:
        """These settlements are on disk: their holds are gone for good."""
        for request_id in request_ids:
            self.settling.pop(request_id, None)

    def settle(self, msg: Settle, now: float) -> tuple[Settled, list]:
        done = self.settled.get(msg.request_id)
        if done is not None:
            return done, []
        hold = self.holds.pop(msg.request_id, None)
        if hold is None:
            raise NotFound(f"no open reservation {msg.request_id}")
        label = f"{msg.provider}/{msg.model}" if msg.provider else ""
        usage = clean_usage(msg.usage) if msg.usage is not None else None
        price = self.price(label, hold.pricing) if usage is not None else None
        if usage is not None and (price is not None or usage.cost_usd is not None):
            cost, reported = cost_micro_usd(usage, price or Price())
            source = "reported" if reported else "pricing"
            provenance = msg.provenance
        elif usage is not None:
            cost, source, provenance = hold.hold_micro, "unpriced", Provenance.ESTIMATED
        elif msg.no_work:
            cost, source, provenance = 0, "refused", Provenance.ESTIMATED
        else:
            cost, source, provenance = hold.hold_micro, "hold", Provenance.ESTIMATED
        cost = micro(cost)
        overrun = max(0, cost - hold.hold_micro)
        usage = usage or Usage()
        base = {"request_id": msg.request_id, "key_name": hold.key_name, "provider": msg.provider,
                "model": msg.model, "client_model": hold.client_model, "credential": msg.credential,
                "hold_micro": hold.hold_micro, "provenance": provenance.value, "reason": msg.reason.value,
                "cost_source": source, "created_at": self.wall(), "basis": str(msg.basis or ""),
                "unanswered": [str(a) for a in msg.unanswered or ()],
                "input": usage.input, "cached_input": usage.cached_input, "cache_write": usage.cache_write,
                "output": usage.output, "reasoning": usage.reasoning}
        entries = [{**base, "kind": "charge", "amount_micro": cost - overrun}]
        if overrun:
            zero = {"input": 0, "cached_input": 0, "cache_write": 0, "output": 0, "reasoning": 0}
            entries.append({**base, **zero, "kind": "overrun", "amount_micro": overrun})
        state = self.keys.get(hold.key_name)
        budget_start = None
        if state is not None:
            state.held_micro -= hold.hold_micro
            state.in_flight -= 1
            state.spent_micro += cost
            if hold.budget_mark is not None and hold.budget_mark == state.budget_mark():
                # counted in the period it was reserved in; a later period's count is not touched
                state.budget_held_micro -= hold.hold_micro
                state.budget_spent_micro += cost
                budget_start = state.budget_start
        self.settling[msg.request_id] = hold
        result = Settled(msg.request_id, cost, overrun, provenance, msg.reason, source)
        self.settled[msg.request_id] = result
        if len(self.settled) > 100_000:
            self.settled.pop(next(iter(self.settled)))
        self.totals["requests"] += 1
        self.totals["charged_micro"] += cost
        self.totals["overrun_micro"] += overrun
        return result, [("settle", {"request_id": msg.request_id, "key_name": hold.key_name,
                                    "charged": cost, "budget_start": budget_start, "entries": entries})]

    def recover(self, reason: EndReason = EndReason.RECOVERED) -> list:
        """Settle every hold left open by a previous process at its reserve."""
        ops = []
        for request_id in list(self.holds):
            _, more = self.settle(Settle(request_id, None, Provenance.ESTIMATED, reason), 0.0)
            ops.extend(more)
        return ops

    def create_key(self, msg: CreateKey) -> tuple[dict, list]:
        """A new key from a ``CreateKey`` (whose fields checked themselves when it was built)."""
        if msg.name in self.keys:
            raise InvalidRequest(f"a key named {msg.name!r} already exists", param="name")
        plaintext = msg.key or "th-" + secrets.token_urlsafe(24)
        if hash_key(plaintext) in self.by_hash:
            raise InvalidRequest("that key value is already in use", param="key")
        if msg.credit_usd is None and not msg.unlimited:
            raise InvalidRequest("A key needs credit_usd, or \"unlimited\": true for a key without a credit limit.")
        if msg.credit_usd is not None and msg.unlimited:
            raise InvalidRequest("A key has either credit_usd or \"unlimited\": true, not both.")
        credit = None if msg.credit_usd is None else to_micro(amount(msg.credit_usd))
        state = KeyState(msg.name, hash_key(plaintext), credit, models=msg.models, created_at=self.wall(),
                         requests_per_minute=msg.requests_per_minute, max_concurrency=msg.max_concurrency,
                         expires_at=msg.expires_at, budget=msg.budget, requests_window_s=msg.requests_window_s)
        state.roll(state.created_at)
        self._index(state)
        return {**state.view(self.wall()), "key": plaintext}, [("put_key", state.row())]

    def update_key(self, msg: UpdateKey) -> tuple[dict, list]:
        """Every check before any change: a refused update leaves the key as it was."""
        state = self.keys.get(msg.name)
        if state is None:
            raise NotFound(f"no key named {msg.name!r}")
        if state.revoked_at is not None:
            raise InvalidRequest(f"the key {msg.name!r} is revoked; a revocation is final (create a new key)")
        credit = state.credit_micro
        if msg.credit_usd is not None:
            credit = to_micro(amount(msg.credit_usd))
        if msg.add_credit_usd is not None:
            credit = (credit or 0) + to_micro(amount(msg.add_credit_usd))
        if credit is not None and credit > MAX_MICRO:
            raise InvalidRequest(f"a key's credit must be at most ${usd(MAX_MICRO)}")
        state.credit_micro = credit
        if msg.requests_per_minute != UNCHANGED:
            state.requests_per_minute = msg.requests_per_minute
        if msg.requests_window_s != UNCHANGED:
            state.requests_window_s = msg.requests_window_s
        if msg.max_concurrency != UNCHANGED:
            state.max_concurrency = msg.max_concurrency
        if msg.disabled is not None:
            state.disabled = msg.disabled
        if msg.models != UNCHANGED:
            state.models = msg.models
        if msg.expires_at != UNCHANGED:
            state.expires_at = msg.expires_at
        ops = []
        if msg.budget != UNCHANGED:
            same_period = (state.budget is not None and msg.budget is not None
                           and state.budget.period == msg.budget.period)
            state.budget = msg.budget
            if not same_period:  # a new budget or period counts from now; a new limit keeps the count
                state.budget_epoch += 1
                state.budget_start, state.budget_spent_micro, state.budget_held_micro = None, 0, 0
                state.roll(self.wall())
                ops.append(("reset_budget", {"name": state.name, "budget_start": state.budget_start}))
        return state.view(self.wall()), [("put_key", state.row()), *ops]

    def revoke_key(self, msg: RevokeKey) -> tuple[dict, list]:
        """Revoke a key for good; revoking it again answers the same and writes nothing.
        Its open holds settle as usual; its ledger history stays."""
        state = self.keys.get(msg.name)
        if state is None:
            raise NotFound(f"no key named {msg.name!r}")
        if state.revoked_at is not None:
            return state.view(self.wall()), []
        state.revoked_at = self.wall()
        return state.view(self.wall()), [("put_key", state.row())]

    def settings(self, name: str) -> KeySettings | None:
        """A key's changeable settings now (None: no such key), to restore if a write fails."""
        state = self.keys.get(name)
        if state is None:
            return None
        return KeySettings(*(getattr(state, field) for field in SETTINGS))

    def restore(self, name: str, settings: KeySettings | None) -> None:
        """Undo a CreateKey (``settings`` None) or an UpdateKey the ledger refused."""
        state = self.keys.get(name)
        if state is None:
            return
        if settings is None:
            del self.keys[name]
            self.by_hash.pop(state.key_hash, None)
            return
        for field in SETTINGS:
            setattr(state, field, getattr(settings, field))

    def query(self, what: str) -> Any:
        if what == "keys":
            wall = self.wall()
            return [k.view(wall) for k in self.keys.values()]
        if what in ("reservations", "all_reservations"):  # one process: its holds are all there are
            wall = self.wall()
            return [reservation_view(h.id, h.key_name, h.client_model, h.hold_micro, h.created_at, status, wall)
                    for status, holds in (("open", self.holds), ("settling", self.settling))
                    for h in holds.values()]
        if what == "totals":
            return {"requests": self.totals["requests"], "charged_usd": usd(self.totals["charged_micro"]),
                    "overrun_usd": usd(self.totals["overrun_micro"])}
        raise InvalidRequest(f"unknown query {what!r}")

    def handle(self, msg: Msg, now: float) -> tuple[Any, list]:
        match msg:
            case Reserve():
                return self.reserve(msg, now)
            case Settle():
                return self.settle(msg, now)
            case Authenticate(key, model):
                return self.authenticate(key, model).name, []
            case AllowedModels(key):
                return self.authenticate(key, None).models, []
            case CreateKey():
                return self.create_key(msg)
            case UpdateKey():
                return self.update_key(msg)
            case RevokeKey():
                return self.revoke_key(msg)
            case Query(what):
                return self.query(what), []
            case Reconfigure():
                return self.reconfigure(msg)
            case _:
                raise TypeError(f"usage: unknown message {msg!r}")

