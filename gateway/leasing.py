"""How the dispatcher leases a credential and gives it back, whichever backend runs.

Locally the credentials actor's answer is the lease. On the shared backend its choice
is confirmed across instances (``SharedLeases.confirm``: one Redis round trip); a
credential full elsewhere is given back uncounted (``Refused``) and the pool is asked
for another, until one is confirmed or none is left -- then the answer says when the
soonest one has room, as the pool's own would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from actors.credentials import Lease, Leased, NoneAvailable, Refused, Release
from actors.mailbox import Mailbox

if TYPE_CHECKING:  # coredis is loaded only by the shared backend
    from actors.redis_leases import SharedLeases


class Leases:
    def __init__(self, credentials: Mailbox, shared: SharedLeases | None = None) -> None:
        self.credentials = credentials
        self.shared = shared

    async def lease(self, msg: Lease) -> Leased | NoneAvailable:
        leased = await self.credentials.ask(msg)
        if self.shared is None:
            return leased
        from actors.redis_leases import Refusal  # loaded with the shared backend already
        exclude = set(msg.exclude)
        soonest: float | None = None
        reasons: set[str] = set()
        while isinstance(leased, Leased):
            verdict = await self.shared.confirm(msg.provider, leased.spec, msg.tokens)
            if not isinstance(verdict, Refusal):
                return attrs.evolve(leased, shared=verdict)
            until = None if verdict.wait_s is None else trio.current_time() + verdict.wait_s
            await self.credentials.tell(Refused(leased.lease_id, until, verdict.reason))
            reasons.add(verdict.reason)
            if until is not None:
                soonest = until if soonest is None else min(soonest, until)
            exclude.add(leased.credential.id)
            leased = await self.credentials.ask(attrs.evolve(msg, exclude=frozenset(exclude)))
        if not reasons:
            return leased
        if leased.until is not None:
            soonest = leased.until if soonest is None else min(soonest, leased.until)
        return NoneAvailable(msg.provider, soonest, ",".join(sorted(reasons | {leased.reason})))

    async def release(self, leased: Leased, msg: Release) -> None:
        """The shared lease goes back first (it never waits): a release whose time runs
        out on a full inbox must not leave a lease that this process renews for ever."""
        if self.shared is not None and leased.shared is not None:
            self.shared.release(leased.shared, msg.tokens)
        await self.credentials.tell(msg)

    def release_at_once(self, leased: Leased, msg: Release) -> bool:
        """``release`` when the credentials actor takes the notice at once (handled
        inline, or room in its inbox); False, having done nothing, when it would wait."""
        if not self.credentials.tell_nowait(msg):
            return False
        if self.shared is not None and leased.shared is not None:
            self.shared.release(leased.shared, msg.tokens)
        return True

    def release_nowait(self, leased: Leased, msg: Release) -> None:
        """``release`` from a path that cannot wait (a cancelled or timed-out one); a
        full inbox loses the notice, as any told message would."""
        if self.shared is not None and leased.shared is not None:
            self.shared.release(leased.shared, msg.tokens)
        self.credentials.tell_nowait(msg)
