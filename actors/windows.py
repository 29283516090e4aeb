"""Rate windows: how much a scope (a gateway key, a credential) may spend per window.

``Windows`` is the seam the meter and the credential pool use for limits that must
hold across processes. ``LocalWindows`` keeps them in this process (the fallback of a
shared implementation while its server is unreachable); a shared one keeps them where
every process sees the same count, with the same answers.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Windows(Protocol):
    async def admit(self, scope: str, limit: int, window_s: float, now: float, cost: int = 1) -> float | None:
        """Count ``cost`` against ``scope`` if ``limit`` per ``window_s`` allows it: None
        when admitted, else the seconds until it would be (nothing counted)."""
        ...


class LocalWindows:
    """Sliding windows in this process; ``now`` is the caller's clock."""

    def __init__(self, max_scopes: int = 100_000) -> None:
        self._spent: dict[str, deque[tuple[float, int]]] = {}
        self._max_scopes = max_scopes

    def admit_now(self, scope: str, limit: int, window_s: float, now: float, cost: int = 1) -> float | None:
        spent = self._spent.get(scope)
        if spent is None:
            if len(self._spent) >= self._max_scopes:
                self._spent.clear()
            spent = self._spent[scope] = deque()
        while spent and spent[0][0] + window_s <= now:
            spent.popleft()
        used = sum(c for _, c in spent)
        if used + cost > limit:
            if not spent:
                return window_s  # one cost larger than the whole limit: never admitted in a window
            return max(spent[0][0] + window_s - now, 0.0)
        spent.append((now, cost))
        return None

    async def admit(self, scope: str, limit: int, window_s: float, now: float, cost: int = 1) -> float | None:
        return self.admit_now(scope, limit, window_s, now, cost)
