"""Everything the running gateway owns, started and stopped in a fixed order.

Start: the state directory's lock first (before anything opens the ledger: a second
gateway on the same ``state_dir`` is refused before it can touch it); then the
embedded simulator (if configured) so providers can point at it; then one upstream
connection pool per provider; then the actor supervisor; then the dispatcher is
published and requests may flow.

Stop (``stop()``, called by the app's lifespan once the server has no request left):
the meter is flushed -- everything already in its inbox is committed -- and so is the
Responses store (every response put is on disk), then the actors stop (the usage
actor closes the ledger, the store its file), then the upstream pools close, then the
simulator, and last the lock is released. Requests never see a stopped actor: the
server finishes or cancels every request, and each cancelled request settles through
the dispatcher's shielded ``finally``, before the lifespan asks the runtime to stop.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from typing import Callable

import trio

from actors.cooldown import CooldownActor, CooldownCore
from actors.credentials import CredentialsActor, CredentialsCore
from actors.routing import RoutingActor, RoutingCore
from actors.store import Flush, StoreActor, StoreLimits
from actors.supervisor import Supervisor
from actors.usage import Query, UsageActor
from gateway.config import Config
from gateway.dispatch import Actors, Dispatcher
from gateway.redaction import redacting_logs, redactor_for
from gateway.observe import Observers
from gateway.sockets import Sockets
from gateway.state_lock import StateDirLock
from gateway.tracing import tracing_for
from protocols.errors import GatewayError
from providers import registry
from providers.simulator import Simulator

log = logging.getLogger("tollhouse")

#: how long a stop waits for the meter to commit what it already holds
FLUSH_TIMEOUT_S = 15.0


class Runtime:
    def __init__(self, config: Config, stopping: Callable[[], bool] = lambda: False,
                 stop_begun: trio.Event | None = None) -> None:
        self.config = config
        self.stopping = stopping  # a graceful stop has begun
        self.stop_begun = trio.Event() if stop_begun is None else stop_begun  # set when it begins (long-lived connections end)
        self.sockets = Sockets()  # open Responses WebSockets, for the admin API
        self.observers = Observers()  # who hears how each request ended (logs, metrics, traces)
        self.tracing = tracing_for(config)  # off (a no-op) unless the config has a tracing section
        if self.tracing.enabled:
            self.observers.add(self.tracing)  # a request's span ends with what it came to
        self.dispatcher: Dispatcher | None = None
        self.supervisor: Supervisor | None = None
        self.simulator: Simulator | None = None
        self.actors: Actors | None = None
        self.providers: dict = {}
        self.redactor = redactor_for(config)  # every secret the config holds, out of upstream text and logs
        self.ready = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def stop(self) -> None:
        """Tear everything down in order; returns once ``run`` has (the lock is free)."""
        self._stop.set()
        await self._stopped.wait()

    def _actors(self) -> tuple[Supervisor, Actors]:
        cfg = self.config
        sup = Supervisor()
        size, timeout = cfg.actors.mailbox_size, cfg.actors.ask_timeout_s
        routing = sup.add("routing", lambda: RoutingActor(RoutingCore(
            cfg.models, cfg.aliases, cfg.providers, cfg.is_priced)), size, timeout)
        credentials = sup.add("credentials", lambda: CredentialsActor(CredentialsCore(
            {name: p.credentials for name, p in cfg.providers.items()})), size, timeout)
        cooldown = sup.add("cooldown", lambda: CooldownActor(CooldownCore(
            cfg.cooldown.base_s, cfg.cooldown.max_s, cfg.cooldown.jitter,
            max_retry_after_s=cfg.cooldown.max_retry_after_s), routing.tell_nowait), size, timeout)
        limiter = trio.CapacityLimiter(1)
        first_start = [True]
        usage = sup.add("usage", lambda: UsageActor(
            cfg.pricing, cfg.state_dir, cfg.keys, limiter, first_start), size, timeout)
        store = None
        if cfg.store.enabled:
            limits = StoreLimits(cfg.store.max_bytes, cfg.store.max_age_s, cfg.store.cache_bytes)
            store_limiter = trio.CapacityLimiter(1)
            store = sup.add("store", lambda: StoreActor(
                limits, cfg.state_dir, store_limiter, cfg.store.sweep_interval_s), size, timeout)
        return sup, Actors(routing, credentials, cooldown, usage, store)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with redacting_logs(self.redactor):
                await self._run(task_status)
        finally:
            await self.tracing.aclose()  # bounded and shielded: the spans of the last requests go out
            self._stopped.set()

    async def _run(self, task_status) -> None:
        cfg = self.config
        with StateDirLock.acquire(cfg.state_dir):
            async with trio.open_nursery() as upstreams:
                if any(p.embedded for p in cfg.providers.values()):
                    self.simulator = Simulator(cfg.simulator.tokens_per_second)
                    await upstreams.start(self.simulator.serve, cfg.simulator.host, cfg.simulator.port)
                async with AsyncExitStack() as pools:
                    for name, pcfg in cfg.providers.items():
                        provider = registry.build(pcfg, self.simulator.url if self.simulator else None,
                                                  self.redactor)
                        pools.push_async_callback(provider.client.aclose)
                        self.providers[name] = provider
                    self.supervisor, self.actors = self._actors()
                    async with trio.open_nursery() as actors:
                        await actors.start(self.supervisor.run)
                        self.dispatcher = Dispatcher(self.actors, self.providers, cfg.streaming,
                                                     cfg.default_hold_output_tokens, cfg.routing.budget_s,
                                                     stopping=self.stopping, observers=self.observers)
                        self.ready.set()
                        task_status.started()
                        await self._stop.wait()
                        await self._flush_meter()
                        await self._flush_store()
                        actors.cancel_scope.cancel()
                upstreams.cancel_scope.cancel()

    async def _flush_store(self) -> None:
        """Wait until every stored response put so far is on disk (the actor also
        writes what is pending when it is cancelled; this makes the stop's order plain
        and bounds it)."""
        if self.actors.store is None:
            return
        try:
            with trio.fail_after(FLUSH_TIMEOUT_S):
                await self.actors.store.ask(Flush(), timeout=FLUSH_TIMEOUT_S)
        except (trio.TooSlowError, GatewayError) as exc:
            log.error("the response store did not flush (%s)", type(exc).__name__)

    async def _flush_meter(self) -> None:
        """Wait until the usage actor has committed every message queued before this one.

        Its inbox is first in, first out and it answers only after a commit, so the
        answer to one more (read-only) message means everything ahead of it is on disk:
        a settlement whose caller gave up waiting is still written, not dropped -- and so
        is one the ledger refused, retried until it lands or the flush's time is up.
        """
        try:
            with trio.fail_after(FLUSH_TIMEOUT_S):
                await self.actors.usage.ask(Query("totals"), timeout=FLUSH_TIMEOUT_S)
                # settlements the ledger refused are still being retried: give them the time left
                await self.supervisor.actor("usage").wait_written()
        except (trio.TooSlowError, GatewayError) as exc:
            log.error("the meter did not flush (%s); its open holds will be recovered at the next start",
                      type(exc).__name__)
