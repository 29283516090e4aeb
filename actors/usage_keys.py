"""The meter's records of keys and holds: what a key may spend and has spent, within
its budget period, and what each request in flight holds. Pure data with the checks
that read only the record itself; ``usage_core`` holds the rules across them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import attrs

from actors.key_terms import Budget, format_utc, period_end, period_start
from protocols.errors import KeyRateLimited
from protocols.money import Price, usd


DEFAULT_WINDOW_S = 60.0  # the window a key's requests_per_minute counts in, unless it says otherwise


@attrs.define
class KeyState:
    name: str
    key_hash: str
    credit_micro: int | None
    spent_micro: int = 0
    held_micro: int = 0
    disabled: bool = False
    models: tuple | None = None
    created_at: float = 0.0
    requests_per_minute: int | None = None
    max_concurrency: int | None = None
    in_flight: int = 0
    requests_window_s: float = DEFAULT_WINDOW_S  # the window requests_per_minute counts in
    recent: deque = attrs.field(factory=deque)
    revoked_at: float | None = None  # revocation is final: the key stays for its history
    expires_at: int | None = None  # unix seconds; from then on the key is refused
    budget: Budget | None = None
    budget_start: int | None = None  # the period whose spending budget_spent_micro counts
    budget_spent_micro: int = 0
    budget_held_micro: int = 0  # holds reserved in budget_start's period, while open
    budget_epoch: int = 0  # a new budget (or period) starts a new count: older holds leave it alone
    _period: tuple | None = attrs.field(default=None, repr=False)

    def roll(self, wall: float) -> None:
        """Start the budget's count afresh once its UTC period is over (in memory only:
        a settlement writes the new period to the ledger with its charge). Never back: a
        clock behind the period the ledger counts in (another instance's clock is ahead,
        or this one was set back) keeps counting there, not in a fresh earlier period."""
        if self.budget is None:
            return
        known = self._period  # (period, start, end) of the last look: no calendar work inside it
        if known is not None and known[:2] == (self.budget.period, self.budget_start) and known[1] <= wall < known[2]:
            return
        start = period_start(self.budget.period, wall)
        if self.budget_start is None or start > self.budget_start:
            self.budget_start, self.budget_spent_micro, self.budget_held_micro = start, 0, 0
        self._period = (self.budget.period, start, period_end(self.budget.period, wall))

    def budget_mark(self) -> tuple | None:
        """What a new hold records, so its settlement counts in its own period only."""
        return None if self.budget is None else (self.budget_epoch, self.budget_start)

    def budget_available(self) -> int | None:
        if self.budget is None:
            return None
        return self.budget.limit_micro - self.budget_spent_micro - self.budget_held_micro

    def budget_view(self, wall: float) -> dict | None:
        if self.budget is None:
            return None
        self.roll(wall)
        return {"period": self.budget.period.value, "limit_usd": usd(self.budget.limit_micro),
                "spent_usd": usd(self.budget_spent_micro), "held_usd": usd(self.budget_held_micro),
                "available_usd": usd(max(self.budget_available() or 0, 0)),
                "period_start": format_utc(self.budget_start),
                "resets_at": format_utc(period_end(self.budget.period, wall))}

    def check_limits(self, now: float, rate: bool = True) -> None:
        """The key's own limits; refusals are 429 with the time to come back. ``rate``:
        whether requests_per_minute is counted here (not when a shared window does)."""
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            raise KeyRateLimited(f"This gateway key already has {self.in_flight} requests in flight "
                                 f"(limit {self.max_concurrency}).", retry_after=1.0)
        if self.requests_per_minute is not None and rate:
            window = self.requests_window_s
            while self.recent and self.recent[0] + window <= now:
                self.recent.popleft()
            if len(self.recent) >= self.requests_per_minute:
                raise self.rate_refusal(self.recent[0] + window - now)

    def rate_refusal(self, retry_after: float) -> KeyRateLimited:
        """The 429 of a full requests window, wherever the window is counted."""
        return KeyRateLimited(f"This gateway key is limited to {self.requests_per_minute} requests "
                              f"per {_per(self.requests_window_s)}.", retry_after=retry_after)

    def available(self) -> int | None:
        if self.credit_micro is None:
            return None
        return self.credit_micro - self.spent_micro - self.held_micro

    def row(self) -> dict:
        return {"name": self.name, "key_hash": self.key_hash, "credit_micro": self.credit_micro,
                "spent_micro": self.spent_micro, "disabled": self.disabled,
                "models": list(self.models) if self.models is not None else None,
                "requests_per_minute": self.requests_per_minute, "requests_window_s": self.requests_window_s,
                "max_concurrency": self.max_concurrency, "created_at": self.created_at, "revoked_at": self.revoked_at, "expires_at": self.expires_at,
                "budget_period": None if self.budget is None else self.budget.period.value,
                "budget_limit_micro": None if self.budget is None else self.budget.limit_micro,
                "budget_start": self.budget_start, "budget_spent_micro": self.budget_spent_micro}

    def view(self, wall: float) -> dict:
        return {"name": self.name, "disabled": self.disabled, "models": self.models,
                "revoked": self.revoked_at is not None, "revoked_at": format_utc(self.revoked_at),
                "expires_at": format_utc(self.expires_at),
                "expired": self.expires_at is not None and wall >= self.expires_at,
                "budget": self.budget_view(wall),
                "requests_per_minute": self.requests_per_minute, "requests_window_s": self.requests_window_s,
                "max_concurrency": self.max_concurrency, "in_flight": self.in_flight,
                "credit_usd": None if self.credit_micro is None else usd(self.credit_micro),
                "spent_usd": usd(self.spent_micro), "held_usd": usd(self.held_micro),
                "available_usd": None if self.available() is None else usd(self.available())}  # type: ignore[arg-type]


def _per(window_s: float) -> str:
    return "minute" if window_s == DEFAULT_WINDOW_S else f"{window_s:g} s"


@attrs.define
class Hold:
    id: str
    key_name: str
    client_model: str
    hold_micro: int
    created_at: float
    provider: str | None = None
    model: str | None = None
    pricing: Mapping[str, Price] | None = None  # the reserving generation's prices (None: the current ones)
    budget_mark: tuple | None = None  # (epoch, period start) of the key's budget it counts in


@attrs.frozen
class KeySettings:
    """What an admin message may change on a key: kept to undo a change the ledger refused."""

    credit_micro: int | None
    disabled: bool
    models: tuple | None
    requests_per_minute: int | None
    requests_window_s: float
    max_concurrency: int | None
    revoked_at: float | None
    expires_at: int | None
    budget: Budget | None
    budget_start: int | None
    budget_spent_micro: int
    budget_held_micro: int
    budget_epoch: int


SETTINGS = tuple(a.name for a in attrs.fields(KeySettings))


@attrs.frozen
class BudgetRow:
    """A budget as the ledger stores it, read back through ``Budget.of``."""

    period: str
    limit_usd: str


def key_state(row: Mapping[str, Any]) -> KeyState:
    """A key's record from its ledger row, SQLite's or Postgres's (nothing held yet)."""
    budget = None if row.get("budget_period") is None else Budget.of(
        BudgetRow(row["budget_period"], usd(row["budget_limit_micro"])))
    return KeyState(row["name"], row["key_hash"], row["credit_micro"], row["spent_micro"], 0, bool(row["disabled"]),
                    tuple(row["models"]) if row["models"] is not None else None, row["created_at"],
                    row["requests_per_minute"], row["max_concurrency"], revoked_at=row.get("revoked_at"),
                    expires_at=row.get("expires_at"), budget=budget, budget_start=row.get("budget_start"),
                    budget_spent_micro=row.get("budget_spent_micro") or 0,
                    requests_window_s=row.get("requests_window_s") or DEFAULT_WINDOW_S)
