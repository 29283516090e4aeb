"""Whether this gateway can take a new request: the answer behind ``GET /readyz``.

Readiness is about this process only -- its actors run and its ledger takes writes --
never about an upstream: one provider's 429s or outage must not take every instance
out of a load balancer at once (failover and cooldowns deal with upstreams). Liveness
(``/healthz``) is simpler still: the process answers.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from gateway.runtime import Runtime


class NotReady(enum.Enum):
    """Why a gateway refuses new requests for now (the JSON ``status`` of a 503)."""

    STARTING = "starting"  # the runtime has not published its actors yet
    STOPPING = "stopping"  # a graceful stop has begun: no new work
    ACTOR_DOWN = "actor_down"  # an actor crashed and is being restarted
    LEDGER_UNAVAILABLE = "ledger_unavailable"  # the ledger refuses writes: no hold can be made


@attrs.frozen
class Readiness:
    reason: NotReady | None  # None: ready
    detail: str | None = None

    @property
    def ready(self) -> bool:
        return self.reason is None

    def view(self) -> dict:
        if self.reason is None:
            return {"status": "ready"}
        view = {"status": self.reason.value}
        if self.detail is not None:
            view["detail"] = self.detail
        return view


def readiness(runtime: Runtime) -> Readiness:
    """The first reason this gateway is not ready, in the order an operator fixes them."""
    if runtime.stopping():
        return Readiness(NotReady.STOPPING)
    if not runtime.ready.is_set() or runtime.supervisor is None:
        return Readiness(NotReady.STARTING)
    down = sorted(name for name, slot in runtime.supervisor.slots.items() if not slot.running)
    if down:
        return Readiness(NotReady.ACTOR_DOWN, ", ".join(down))
    if runtime.supervisor.actor("usage").fault is not None:
        # the fault itself (a path, a server's message) is in the log, not on an open probe
        return Readiness(NotReady.LEDGER_UNAVAILABLE, "the usage ledger refuses writes; the gateway's log says why")
    return Readiness(None)
