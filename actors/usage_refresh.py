"""The shared meter's refresh: the core's records of some keys, as Postgres holds them.

In the shared backend several processes change one key's balance, so before a batch
the meter reads (and locks) the keys it touches and hands their rows here: each key's
record is rebuilt from its row (credit, spent, settings, revocation, expiry, budget and
its count) and from the open reservations of every instance (what they hold, how many,
and how much of it in the current budget period). Pure: rows in, core records out.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from actors.usage_core import UsageCore
from actors.usage_keys import Hold, key_state

Held = Mapping[str, Iterable[tuple[int | None, int, int]]]  # key -> (budget period start, held, count)


def refresh(core: UsageCore, rows: Iterable[Mapping], held: Held, wall: float) -> None:
    """Replace the core's records of these keys with the ledger's. A key's budget epoch
    is this process's (it tells this process's holds of an older budget apart)."""
    for row in rows:
        state = key_state(row)
        old = core.keys.get(state.name)
        if old is not None:
            state.budget_epoch = old.budget_epoch
        state.roll(wall)
        for start, amount, count in held.get(state.name, ()):
            state.held_micro += amount
            state.in_flight += count
            if state.budget is not None and start is not None and start == state.budget_start:
                state.budget_held_micro += amount
        core.index(state)


def adopt(core: UsageCore, row: Mapping) -> Hold:
    """An open reservation read from the ledger (another instance's, or an earlier
    life's of this one), taken into the core so it can be settled here."""
    hold = Hold(row["id"], row["key_name"], row["model"] or "", row["hold_micro"], row["created_at"],
                row["provider"], row["model"])
    state = core.keys.get(hold.key_name)
    start = row.get("budget_start")
    if state is not None and state.budget is not None and start is not None and start == state.budget_start:
        hold.budget_mark = state.budget_mark()
    core.holds[hold.id] = hold
    return hold
