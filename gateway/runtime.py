"""Everything the running gateway owns, started and stopped in one nursery.

Order matters: the embedded simulator (if configured) starts first so providers can
point at it; then one upstream connection pool per provider; then the actor supervisor;
then the dispatcher is published and requests may flow. Leaving ``run`` closes them
in reverse.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import trio

from actors.cooldown import CooldownActor, CooldownCore
from actors.credentials import CredentialsActor, CredentialsCore
from actors.routing import RoutingActor, RoutingCore
from actors.supervisor import Supervisor
from actors.usage import UsageActor
from gateway.config import Config
from gateway.dispatch import Actors, Dispatcher
from providers import registry
from providers.simulator import Simulator

log = logging.getLogger("tollhouse")


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.dispatcher: Dispatcher | None = None
        self.supervisor: Supervisor | None = None
        self.simulator: Simulator | None = None
        self.actors: Actors | None = None
        self.providers: dict = {}
        self.ready = trio.Event()

    def _actors(self) -> tuple[Supervisor, Actors]:
        cfg = self.config
        sup = Supervisor()
        size, timeout = cfg.actors.mailbox_size, cfg.actors.ask_timeout_s
        routing = sup.add("routing", lambda: RoutingActor(RoutingCore(
            cfg.models, cfg.aliases, cfg.providers)), size, timeout)
        credentials = sup.add("credentials", lambda: CredentialsActor(CredentialsCore(
            {name: p.credentials for name, p in cfg.providers.items()})), size, timeout)
        cooldown = sup.add("cooldown", lambda: CooldownActor(CooldownCore(
            cfg.cooldown.base_s, cfg.cooldown.max_s, cfg.cooldown.jitter,
            max_retry_after_s=cfg.cooldown.max_retry_after_s), routing.tell_nowait), size, timeout)
        limiter = trio.CapacityLimiter(1)
        first_start = [True]
        usage = sup.add("usage", lambda: UsageActor(
            cfg.pricing, cfg.state_dir, cfg.keys, limiter, first_start), size, timeout)
        return sup, Actors(routing, credentials, cooldown, usage)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            if any(p.embedded for p in cfg.providers.values()):
                self.simulator = Simulator(cfg.simulator.tokens_per_second)
                await nursery.start(self.simulator.serve, cfg.simulator.host, cfg.simulator.port)
            for name, pcfg in cfg.providers.items():
                provider = registry.build(pcfg, self.simulator.url if self.simulator else None)
                stack.push_async_callback(provider.client.aclose)
                self.providers[name] = provider
            self.supervisor, self.actors = self._actors()
            await nursery.start(self.supervisor.run)
            self.dispatcher = Dispatcher(self.actors, self.providers, cfg.streaming, cfg.default_hold_output_tokens,
                                         cfg.routing.budget_s)
            self.ready.set()
            task_status.started()
            await trio.sleep_forever()
