"""Cooldowns across instances: a rest begun here reaches every instance at once.

When this process's cooldown actor begins a timed rest (a credential's, one model's on
a credential, or a provider-wide trip), it ``offer``s it here without waiting: the
publisher task writes it to the rests hash with its deadline and publishes it on the
channel, in one Lua step on Redis's clock (``redis_scripts.REST``). Every instance's
subscriber applies a rest from another instance to its own cooldown, credentials and
routing (``apply``), so it routes around that credential at once; its own notices are
known by their origin and skipped. On each (re)subscription it loads the rests still
running, so an instance that starts, or comes back after Redis did, knows them too.

Deadlines cross as the time left (Redis's deadline minus Redis's now); each instance
adds that to its own clock. A dead credential stays this instance's finding (it is
about a secret every instance will try and learn of itself, and an admin re-enables it
per instance). While Redis is unreachable, rests stay in this process (counted on the
link as a fallback) and are not sent later.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import attrs
import trio
from coredis.retry import NoRetryPolicy

from actors.redis_link import UNREACHABLE, LinkState, RedisLink, RedisUnavailable
from actors.redis_scripts import REST, RESTS

log = logging.getLogger("tollhouse.redis")

CHANNEL = "tollhouse:rests"
HASH = "tollhouse:rests"
QUEUE = 1024


@attrs.frozen
class Rest:
    """A rest: ``credential`` "*" is the whole provider, ``model`` "*" every model."""

    provider: str
    credential: str
    model: str
    reason: str
    wait_s: float

    @property
    def field(self) -> str:
        return f"{self.provider}\x00{self.credential}\x00{self.model}"

    def payload(self) -> str:
        return json.dumps([self.provider, self.credential, self.model, self.reason])

    @classmethod
    def parse(cls, wait_ms: str, payload: str) -> "Rest":
        provider, credential, model, reason = json.loads(payload)
        return cls(provider, credential, model, reason, int(wait_ms) / 1000)


class RestRelay:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.origin = os.urandom(8).hex()
        self.received = 0  # rests from other instances applied (a notice or a load)
        self.subscriptions = 0  # times the subscription was (re)made
        self._changed = trio.Event()
        self._send, self._queue = trio.open_memory_channel[Rest](QUEUE)
        self._publish = link.client.register_script(REST)
        self._load = link.client.register_script(RESTS)

    def offer(self, rest: Rest) -> None:
        """From the cooldown actor (synchronous): share this rest, without waiting."""
        if not self.link.up:
            self.link.fell_back("rests")
            return
        try:
            self._send.send_nowait(rest)
        except trio.WouldBlock:
            self.link.fell_back("rests")

    async def wait_received(self, count: int) -> None:
        """Return once ``count`` rests from elsewhere have been applied here."""
        while self.received < count:
            await self._changed.wait()

    async def wait_subscribed(self, count: int = 1) -> None:
        while self.subscriptions < count:
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, apply: Callable[[Rest], Any], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The publisher and the subscriber; started once the first subscription holds
        (or Redis was found unreachable: the gateway starts without it)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            await nursery.start(self._subscriber, apply)
            task_status.started()

    async def _publisher(self) -> None:
        async for rest in self._queue:
            keys = [HASH]
            args = [rest.field, max(int(rest.wait_s * 1000), 1), rest.payload(), CHANNEL, self.origin]
            try:
                await self.link.call(lambda client: self._publish(keys=keys, args=args))
            except RedisUnavailable:
                self.link.fell_back("rests")

    async def _subscriber(self, apply: Callable[[Rest], Any], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            try:
                async with self.link.client.pubsub(channels=[CHANNEL], ignore_subscribe_messages=True,
                                                   retry_policy=NoRetryPolicy()) as subscription:
                    running = await self.link.call(lambda client: self._load(keys=[HASH]))
                    for line in running:
                        wait_ms, _, payload = _text(line).partition("|")
                        self._apply(apply, Rest.parse(wait_ms, payload))
                    self.subscriptions += 1
                    self._note()
                    if not started:
                        started = True
                        task_status.started()
                    async for message in subscription:
                        self._on_message(apply, _text(message["data"]))
            except* UNREACHABLE as group:
                self.link.mark_down(f"subscription lost: {type(group.exceptions[0]).__name__}")
            except* RedisUnavailable:
                pass
            if not started:
                started = True
                task_status.started()
            if self.link.up:
                await trio.sleep(self.link.retry_s)  # the subscription ended with Redis still there
            else:
                await self.link.wait_state(LinkState.UP)  # the link's probe finds it back

    def _on_message(self, apply: Callable[[Rest], Any], data: str) -> None:
        origin, _, rest = data.partition("|")
        if origin == self.origin:
            return  # this instance's own rest: applied when it began
        wait_ms, _, payload = rest.partition("|")
        try:
            parsed = Rest.parse(wait_ms, payload)
        except (ValueError, TypeError):
            log.warning("a rest notice could not be read; ignored")
            return
        self._apply(apply, parsed)

    def _apply(self, apply: Callable[[Rest], Any], rest: Rest) -> None:
        apply(rest)
        self.received += 1
        self._note()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
