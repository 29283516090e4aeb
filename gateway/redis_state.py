"""What a gateway on the shared backend keeps in Redis, built from ``state.redis``.

``RedisState`` owns the link and what rides on it: the rate windows the meter counts a
key's requests in (``windows``), the credential leases (``leases``), the cooldown
relay (``rests``) and the field cache's shared entries (``fields``). The runtime starts it before its actors (the link must be open when
the first request counts) and starts the relay once the actors run (it tells them).
None of it holds money: the meter's credit and reservations are Postgres only, so a
Redis outage changes who counts rate limits and cooldowns (this process, meanwhile),
never what is charged.
"""

from __future__ import annotations

import trio

from actors import cooldown, credentials
from actors.mailbox import Mailbox
from actors.redis_leases import SharedLeases
from actors.redis_fields import FieldRelay
from actors.redis_link import RedisLink
from actors.redis_rests import Rest, RestRelay
from actors.redis_windows import RedisWindows
from actors.routing import TargetCooling
from gateway.config_state import RedisConfig


class RedisState:
    def __init__(self, config: RedisConfig) -> None:
        self.link = RedisLink(config.url.value, config.timeout_s)
        self.windows = RedisWindows(self.link)
        self.rests = RestRelay(self.link)
        self.fields = FieldRelay(self.link)
        self.leases = SharedLeases(self.link, config.lease_ttl_s)

    async def open(self, nursery: trio.Nursery) -> None:
        """The link and the lease keeper (before the actors start)."""
        await nursery.start(self.link.run)
        nursery.start_soon(self.leases.run)
        nursery.start_soon(self.fields.run)

    async def relay(self, nursery: trio.Nursery, routing: Mailbox, creds: Mailbox, cooling: Mailbox) -> None:
        """Share this instance's rests and take the others' (once the actors run)."""

        def apply(rest: Rest) -> None:
            until = trio.current_time() + rest.wait_s
            cooling.tell_nowait(cooldown.Remote(rest.provider, rest.credential, rest.model, rest.reason, until))
            if rest.credential == "*":
                routing.tell_nowait(TargetCooling(rest.provider, None, until))
            else:
                creds.tell_nowait(credentials.Cool(rest.provider, rest.credential,
                                                   None if rest.model == "*" else rest.model, until))

        await nursery.start(self.rests.run, apply)

    def share(self, key: tuple, entry: dict, now: float) -> None:
        """The cooldown actor's hook: a timed rest begun here goes to every instance."""
        provider, credential, model = key
        self.rests.offer(Rest(provider, credential, model, entry["reason"], entry["until"] - now))
