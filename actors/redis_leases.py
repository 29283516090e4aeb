"""Credential leases across instances: concurrency and per-minute windows in Redis.

The credentials actor's pure core keeps choosing (tiers, least recently used, cooling,
dead); on the shared backend its choice is then confirmed in one Lua step
(``redis_scripts.LEASE``, one round trip): the credential's concurrency is a sorted set
of lease ids scored by their expiry, and its requests and tokens per minute are
windows on Redis's clock, all checked and taken together. A refusal names what is
full and, for a window, when it has room.

A lease lives ``ttl_s`` unless renewed: ``run`` renews every open lease of this
process in one step every third of it, so a long stream keeps its slot and a crashed
process's leases expire by themselves. Releases are queued and sent by ``run`` too,
so ending a request never waits on Redis. While Redis is unreachable ``confirm``
answers None: the local pool's own count decides (a fallback, counted on the link).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import attrs
import trio

from actors.redis_link import RedisLink, RedisUnavailable
from actors.redis_scripts import LEASE, RELEASE, RENEW
from actors.redis_windows import micros

PREFIX = "tollhouse:credential:"
WINDOW_S = 60.0  # a credential's requests_per_minute and tokens_per_minute window
QUEUE = 4096
REFUSALS = {0: "busy", 1: "requests_per_minute", 2: "tokens_per_minute"}


@attrs.frozen
class Refusal:
    """The credential is full across instances: ``reason`` as the pool names it, and
    the seconds until a window has room (None for concurrency)."""

    reason: str
    wait_s: float | None


@attrs.frozen
class Opened:
    provider: str
    credential_id: str
    tokens_limited: bool


def _keys(provider: str, credential_id: str) -> list[str]:
    base = f"{PREFIX}{provider}\x00{credential_id}:"
    return [base + "leases", base + "requests", base + "requests:sum", base + "tokens", base + "tokens:sum"]


class SharedLeases:
    def __init__(self, link: RedisLink, ttl_s: float) -> None:
        self.link = link
        self.ttl_s = ttl_s
        self.open: dict[str, Opened] = {}  # lease id -> whose it is, while it runs here
        self._origin = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._lease = link.client.register_script(LEASE)
        self._release = link.client.register_script(RELEASE)
        self._renew = link.client.register_script(RENEW)
        self._send, self._releases = trio.open_memory_channel[tuple[str, Opened, int]](QUEUE)

    async def confirm(self, provider: str, spec: Any, tokens: int) -> str | Refusal | None:
        """Take a lease on ``spec`` (a credential of ``provider``) across instances: its
        id, a ``Refusal``, or None when Redis cannot say (the local pool decides)."""
        lease_id = f"{self._origin}.{next(self._ids)}"
        rpm, tpm = spec.requests_per_minute, spec.tokens_per_minute
        args = [lease_id, micros(self.ttl_s), spec.max_concurrency, -1 if rpm is None else rpm,
                -1 if tpm is None else tpm, tokens, micros(WINDOW_S)]
        keys = _keys(provider, spec.id)
        try:
            code, wait_us = await self.link.call(lambda client: self._lease(keys=keys, args=args))
        except RedisUnavailable:
            self.link.fell_back("leases")
            return None
        if int(code) == 3:
            self.open[lease_id] = Opened(provider, spec.id, tpm is not None)
            return lease_id
        return Refusal(REFUSALS[int(code)], None if int(wait_us) < 0 else int(wait_us) / 1_000_000)

    def release(self, lease_id: str, tokens: int = 0) -> None:
        """Give a lease back (without waiting); what the call produced joins the tokens
        window. A release that cannot be queued or sent lets the lease expire instead."""
        opened = self.open.pop(lease_id, None)
        if opened is None:
            return
        try:
            self._send.send_nowait((lease_id, opened, tokens))
        except trio.WouldBlock:
            self.link.fell_back("leases")

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._releaser)
            nursery.start_soon(self._renewer)

    async def _releaser(self) -> None:
        async for lease_id, opened, tokens in self._releases:
            keys = _keys(opened.provider, opened.credential_id)
            args = [lease_id, tokens, micros(WINDOW_S), 1 if opened.tokens_limited else 0]
            try:
                await self.link.call(lambda client: self._release(keys=[keys[0], keys[3], keys[4]], args=args))
            except RedisUnavailable:
                self.link.fell_back("leases")

    async def _renewer(self) -> None:
        while True:
            await trio.sleep(self.ttl_s / 3)
            if not self.open or not self.link.up:
                continue
            ids = list(self.open)
            keys = [_keys(self.open[i].provider, self.open[i].credential_id)[0] for i in ids]
            try:
                await self.link.call(lambda client: self._renew(keys=keys, args=[micros(self.ttl_s), *ids]))
            except RedisUnavailable:
                pass  # the link says so once; leases not renewed in time expire as a crash's would
