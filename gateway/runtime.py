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

Reload (``reload``, on SIGHUP or ``POST /admin/reload``): see ``gateway/generation.py``.
The actors' factories read the current config, so an actor restarted after a reload
comes back with the reloaded settings.
"""

from __future__ import annotations

import logging
from collections import Counter
import time
from contextlib import AsyncExitStack

from typing import TYPE_CHECKING, Callable

import trio

from actors import cooldown, credentials, routing as routing_actor, usage as usage_actor
from actors.cooldown import CooldownActor, CooldownCore
from actors.durations import LEDGER_COMMIT_BOUNDS, Durations
from actors.credentials import CredentialsActor, CredentialsCore
from actors.routing import RoutingActor, RoutingCore, Table
from actors.store import Flush, StoreLimits
from actors.supervisor import Supervisor
from actors.usage import Query
from actors.windows import LocalWindows, Windows
from gateway.config import Config
from gateway.dispatch import Actors, Dispatcher
from gateway.config_state import shared
from gateway.field_cache import FieldCache, FieldStore
from gateway.leasing import Leases
from gateway.metrics import Metrics
from gateway.metrics import listener as metrics_listener
from gateway.generation import (ConfigSource, Generation, ReloadRefused, changed_sections, restart_problems,
                                same_pool)
from gateway.redaction import redacting_logs, redactor_for, secret_values
from gateway.observe import Observers
from gateway.sockets import Sockets
from gateway.state_backend import instance_id_for, meter_factory, store_factory
from gateway.state_lock import StateDirLock
from gateway.tracing import tracing_for
from gateway.transform_trace import TransformTraces
from gateway.worker_link import Seat, worker_dir
from protocols.errors import GatewayError, InvalidRequest
from protocols.redact import Redactor
from providers import registry
from providers.seams import Provider
from providers.simulator import Simulator

if TYPE_CHECKING:
    from gateway.redis_state import RedisState

log = logging.getLogger("tollhouse")

#: how long a stop waits for the meter to commit what it already holds
FLUSH_TIMEOUT_S = 15.0


class Runtime:
    def __init__(self, config: Config, stopping: Callable[[], bool] = lambda: False,
                 stop_begun: trio.Event | None = None, source: ConfigSource | None = None,
                 seat: Seat | None = None) -> None:
        self.config = config  # the current generation's; a request uses its own (its dispatcher's)
        self.source = source  # the file a reload reads (None: this gateway cannot reload)
        worker = None if seat is None else seat.index
        self.worker = worker  # this process's index among ``--workers N`` (None: one process alone)
        # this process's own files (the state_dir lock, transform traces, a local Responses
        # store): state_dir itself, or a worker's ``<state_dir>/workers/<i>`` (gateway.worker_link)
        self.own_dir = config.state_dir if worker is None else str(worker_dir(config.state_dir, worker))
        self.fleet = None  # a worker's ``WorkerLink`` to its parent (None: one process alone)
        self.generation: Generation | None = None
        self._retiring: list[Generation] = []  # replaced, with requests still in flight
        self._open: list[Provider] = []  # every provider whose connection pool is open
        self._secrets = secret_values(config)  # of every generation loaded: all redacted
        self._reloading = trio.Lock()
        self._log_filter = None
        self._tasks: trio.Nursery | None = None
        self.on_reload: list[Callable[[Config], None]] = []  # told each new config once it runs
        self.on_redactor: list[Callable[[Redactor], None]] = []  # told each redactor a reload makes
        self.stopping = stopping  # a graceful stop has begun
        self.stop_begun = trio.Event() if stop_begun is None else stop_begun  # set when it begins (long-lived connections end)
        self.sockets = Sockets()  # open Responses WebSockets, for the admin API
        self.observers = Observers()  # who hears how each request ended (logs, metrics, traces)
        self.in_flight: Counter = Counter()  # calls being served, by (protocol, transport, stream), every generation
        self.ledger_commits = Durations(LEDGER_COMMIT_BOUNDS)  # the meter's commit times, across its restarts
        self.instance_id = instance_id_for(config, seat)  # this process among the shared backend's instances
        self.metrics: Metrics | None = None
        self.metrics_url: str | None = None  # set once a separate metrics port is bound
        if config.metrics.enabled:
            self.metrics = Metrics(config)
            self.observers.add(self.metrics.served)
            self.on_reload.append(self.metrics.configure)  # new models and targets get their labels
        self.tracing = tracing_for(config)  # off (a no-op) unless the config has a tracing section
        if self.tracing.enabled:
            self.observers.add(self.tracing)  # a request's span ends with what it came to
            self.on_redactor.append(self.tracing.use_redactor)
        self.dispatcher: Dispatcher | None = None
        self.supervisor: Supervisor | None = None
        self.simulator: Simulator | None = None
        self.actors: Actors | None = None
        self.providers: dict = {}
        self.redactor = redactor_for(config)  # every secret the config holds, out of upstream text and logs
        # transform traces: off unless trace.enabled; lines redacted with the current redactor
        self.transform_traces = TransformTraces(  # a worker also finds its siblings' traces
            config.trace, self.own_dir, lambda: self.redactor,
            None if worker is None else worker_dir(config.state_dir, worker).parent)
        self.on_reload.append(self.transform_traces.configure)
        # the shared backend's Redis half (rate windows, leases, cooldowns); None: local
        self.redis: RedisState | None = None
        if shared(config.state) and config.state.redis:
            from gateway.redis_state import RedisState  # coredis: loaded only by the shared backend
            self.redis = RedisState(config.state.redis)
        # kept fields outlive reloads; their bounds are read at start. With Redis, every
        # instance's store is in front of the conversations' entries there
        self.field_store = FieldStore(config.field_cache.max_bytes, config.field_cache.ttl_s)
        if self.redis is not None:
            from gateway.field_share import SharedFieldStore
            self.field_store = SharedFieldStore(config.field_cache.max_bytes, config.field_cache.ttl_s,
                                                self.redis.fields)
        # where the meter counts a key's requests per window: every instance's on the shared backend
        self.windows: Windows = self.redis.windows if self.redis is not None else LocalWindows()
        self.ready = trio.Event()
        self._stop = trio.Event()
        self._stopped = trio.Event()

    @property
    def metrics_port(self) -> int | None:
        """``metrics.port``, or worker ``i``'s own: ``metrics.port + i`` (0 stays 0: any free
        port), so each worker's counters are scraped whole, from that worker alone."""
        port = self.config.metrics.port
        if port is None or port == 0 or self.worker is None:
            return port
        return port + self.worker

    async def stop(self) -> None:
        """Tear everything down in order; returns once ``run`` has (the lock is free)."""
        self._stop.set()
        await self._stopped.wait()

    def _actors(self) -> tuple[Supervisor, Actors]:
        cfg = self.config
        sup = Supervisor()
        size, timeout = cfg.actors.mailbox_size, cfg.actors.ask_timeout_s
        # the factories read ``self.config`` when they run: a restart after a reload uses it
        routing = sup.add("routing", lambda: RoutingActor(RoutingCore(
            self.config.models, self.config.aliases, self.config.providers, self.config.is_priced)), size, timeout)
        credentials = sup.add("credentials", lambda: CredentialsActor(CredentialsCore(
            {name: p.credentials for name, p in self.config.providers.items()})), size, timeout)
        cooldown = sup.add("cooldown", lambda: CooldownActor(CooldownCore(
            self.config.cooldown.base_s, self.config.cooldown.max_s, self.config.cooldown.jitter,
            max_retry_after_s=self.config.cooldown.max_retry_after_s), routing.tell_nowait,
            self.redis.share if self.redis is not None else None), size, timeout)
        usage = sup.add("usage", meter_factory(lambda: self.config, self.instance_id, self.windows,
                                               self.ledger_commits), size, timeout)
        store = None
        if cfg.store.enabled:
            limits = StoreLimits(cfg.store.max_bytes, cfg.store.max_age_s, cfg.store.cache_bytes)
            store = sup.add("store", store_factory(cfg, limits, self.own_dir), size, timeout)
        return sup, Actors(routing, credentials, cooldown, usage, store)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with redacting_logs(self.redactor) as self._log_filter:
                await self._run(task_status)
        finally:
            await self.tracing.aclose()  # bounded and shielded: the spans of the last requests go out
            self._stopped.set()

    async def _run(self, task_status) -> None:
        cfg = self.config
        with StateDirLock.acquire(self.own_dir):
            async with trio.open_nursery() as upstreams:
                if any(p.embedded for p in cfg.providers.values()):
                    self.simulator = Simulator(cfg.simulator.tokens_per_second)
                    await upstreams.start(self.simulator.serve, cfg.simulator.host, cfg.simulator.port)
                async with AsyncExitStack() as pools:
                    pools.push_async_callback(self._close_providers)
                    for name, pcfg in cfg.providers.items():
                        self.providers[name] = self._provider(pcfg)
                    self.supervisor, self.actors = self._actors()
                    async with trio.open_nursery() as actors:
                        self._tasks = actors
                        if self.redis is not None:
                            await self.redis.open(actors)
                        await actors.start(self.supervisor.run)
                        if self.redis is not None:
                            await self.redis.relay(actors, self.actors.routing, self.actors.credentials,
                                                   self.actors.cooldown)
                        await actors.start(self.transform_traces.file.run)
                        self.dispatcher = self._dispatcher(cfg, self.providers)
                        self.generation = Generation(1, cfg, time.time(), self.dispatcher, self.providers)
                        if self.metrics is not None and cfg.metrics.port is not None:
                            binds = await actors.start(metrics_listener.serve, self, cfg.server.host,
                                                       self.metrics_port)
                            self.metrics_url = binds[0]
                            log.info("tollhouse metrics on %s/metrics", self.metrics_url)
                        self.ready.set()
                        task_status.started()
                        await self._stop.wait()
                        await self._flush_meter()
                        await self._flush_store()
                        with trio.move_on_after(FLUSH_TIMEOUT_S):
                            await self.transform_traces.file.flush()  # the last requests' traces
                        actors.cancel_scope.cancel()
                upstreams.cancel_scope.cancel()

    # ------------------------------------------------------------ generations

    def _provider(self, pcfg) -> Provider:
        provider = registry.build(pcfg, self.simulator.url if self.simulator else None, self.redactor)
        self._open.append(provider)
        return provider

    def _dispatcher(self, cfg: Config, providers: dict) -> Dispatcher:
        table = Table.build(cfg.models, cfg.aliases, cfg.providers, cfg.is_priced)
        self.field_store.configure(cfg.field_cache)
        return Dispatcher(self.actors, providers, cfg.streaming, cfg.default_hold_output_tokens, cfg.routing.budget_s,
                          stopping=self.stopping, observers=self.observers, table=table, pricing=cfg.pricing,
                          in_flight=self.in_flight, traces=self.transform_traces,
                          field_cache=FieldCache.of(cfg.field_cache, self.field_store),
                          leases=Leases(self.actors.credentials, self.redis.leases if self.redis else None))

    async def _close_providers(self, retired: list | None = None) -> None:
        """Close the pools of ``retired`` providers (None: every one still open, at stop)."""
        for provider in list(self._open if retired is None else retired):
            if any(p is provider for p in self._open):
                self._open = [p for p in self._open if p is not provider]
                with trio.CancelScope(shield=True):
                    await provider.client.aclose()

    async def reload_from_source(self) -> Generation:
        """Read the config file again and apply it (``ReloadRefused``: nothing changed)."""
        if self.source is None:
            raise ReloadRefused([("$", "this gateway was not started from a config file; there is nothing to reload")])
        return await self.reload(self.source.load())

    async def reload(self, new: Config) -> Generation:
        """Apply ``new`` as the next generation: requests that start from now on use it,
        the ones in flight finish on theirs. Refused (``ReloadRefused``) when it changes a
        setting that needs a restart, and when the ledger cannot record its new keys
        (``LedgerUnavailable``): either way before anything changed."""
        async with self._reloading:
            if not self.ready.is_set() or self.stopping():
                raise ReloadRefused([("$", "the gateway is starting or stopping; reload refused")])
            old = self.generation
            problems = restart_problems(old.config, new, self.simulator is not None)
            if problems:
                raise ReloadRefused(problems)
            providers, built = {}, []
            for name, pcfg in new.providers.items():
                if name in old.providers and same_pool(old.config.providers[name], pcfg):
                    providers[name] = old.providers[name]
                else:
                    providers[name] = self._provider(pcfg)
                    built.append(providers[name])
            self._redact(secret_values(new))
            dispatcher = self._dispatcher(new, providers)
            try:
                created = await self._reconfigure_actors(new, dispatcher.table)
            except BaseException:
                await self._close_providers(built)  # requests keep the running generation
                raise
            generation = Generation(old.number + 1, new, time.time(), dispatcher, providers, tuple(created))
            self.generation, self.config, self.dispatcher, self.providers = generation, new, dispatcher, providers
            self._retiring.append(old)
            self._tasks.start_soon(self._retire, old)
            for listener in self.on_reload:
                listener(new)
            log.info("config reloaded: generation %d (changed: %s; keys created: %s)", generation.number,
                     ", ".join(changed_sections(old.config, new)) or "nothing", ", ".join(created) or "none")
            return generation

    async def _reconfigure_actors(self, new: Config, table: Table) -> list[str]:
        """The stateful actors take the new config entry by entry; the meter first, as
        the only one that can refuse (its ledger must record the new keys)."""
        try:
            created = await self.actors.usage.ask(usage_actor.Reconfigure(new.pricing, new.keys))
        except InvalidRequest as exc:  # a new config key the meter cannot take
            raise ReloadRefused([(exc.param or "keys", exc.message.removeprefix(f"{exc.param}: "))]) from None
        await self.actors.credentials.ask(credentials.Reconfigure(
            {name: p.credentials for name, p in new.providers.items()}))
        await self.actors.cooldown.ask(cooldown.Reconfigure(
            new.cooldown.base_s, new.cooldown.max_s, new.cooldown.jitter, new.cooldown.max_retry_after_s,
            {name: frozenset(c.id for c in p.credentials) for name, p in new.providers.items()}))
        await self.actors.routing.ask(routing_actor.Reconfigure(table))
        return created

    def _redact(self, secrets: set[str]) -> None:
        """Add a new generation's secrets to the redactor of every provider and of the logs
        (the old ones stay: a request in flight may still meet them)."""
        if secrets <= self._secrets:
            return
        self._secrets |= secrets
        self.redactor = Redactor(self._secrets)
        for provider in self._open:
            provider.redactor = self.redactor
        if self._log_filter is not None:
            self._log_filter.redactor = self.redactor
        for listener in self.on_redactor:
            listener(self.redactor)

    async def _retire(self, old: Generation) -> None:
        """Once ``old`` has no request left, close the pools no live generation uses."""
        await old.dispatcher.wait_idle()
        self._retiring = [g for g in self._retiring if g is not old]
        live = [self.generation, *self._retiring]
        unused = [p for p in old.providers.values()
                  if not any(p is q for g in live for q in g.providers.values())]
        await self._close_providers(unused)

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
                await self.supervisor.actor("usage").retire()  # a shared ledger: this instance leaves it
        except (trio.TooSlowError, GatewayError) as exc:
            log.error("the meter did not flush (%s); its open holds will be recovered at the next start",
                      type(exc).__name__)
