"""Model names -> an ordered plan of upstream targets.

A client's model name is resolved in this order: an alias, a configured model (its
targets are the fallback group, in order), ``provider/model`` direct syntax for a
configured provider, then the catch-all model ``"*"`` if the config has one. Anything
else is a 404. A direct ``provider/model`` name is served only when ``priced`` says the
meter has a price for it (its own, ``provider/*``, or free on purpose): otherwise it is
a 404 before any credit is held or upstream called, so a client cannot reach a model
the operator never priced. Configured targets are checked when the config loads. Targets whose whole provider or model is cooling (a notice from the
cooldown actor) move to the back of the plan rather than vanish, so a request still
has somewhere to go when everything is cooling.

The names themselves are a ``Table``, one per config generation: a request resolves
against the table of the generation it started on (``Resolve(model, table)``), so a
config reload never sends a request that began before it to a target of the new
config; ``Reconfigure`` replaces the actor's own table (model lists, direct lookups)
and keeps the cooling notices of the providers that remain.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import attrs

from actors.base import Actor
from protocols.errors import NotFound

CATCH_ALL = "*"


@attrs.frozen
class Target:
    provider: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.provider}/{self.model}"


@attrs.frozen
class Plan:
    """The fallback order for one request; ``model`` is the configured name resolved."""

    model: str
    targets: tuple
    hold_output_tokens: int | None = None


@attrs.frozen(eq=False)
class Table:
    """One config generation's model names, aliases and providers."""

    models: Mapping[str, Plan]
    aliases: Mapping[str, str]
    providers: frozenset
    priced: Callable[[str], bool]

    @classmethod
    def build(cls, models: Mapping, aliases: Mapping[str, str], providers: Iterable[str],
              priced: Callable[[str], bool]) -> "Table":
        plans = {name: Plan(name, tuple(Target(*t.split("/", 1)) for t in m.targets), m.hold_output_tokens)
                 for name, m in models.items()}
        return cls(plans, dict(aliases), frozenset(providers), priced)

    def lookup(self, model: str) -> Plan:
        name = self.aliases.get(model, model)
        plan = self.models.get(name) if name != CATCH_ALL else None
        if plan is not None:
            return plan
        provider, sep, upstream = name.partition("/")
        if sep and upstream and provider in self.providers:
            if not self.priced(name):
                raise NotFound(f"The model '{model}' is not served here: no price is configured for it.",
                               param="model")
            return Plan(name, (Target(provider, upstream),))
        if CATCH_ALL in self.models:
            return self.models[CATCH_ALL]
        raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")

    def model_names(self) -> list[str]:
        return sorted([n for n in self.models if n != CATCH_ALL] + list(self.aliases))


@attrs.frozen
class Resolve:
    """Ask: the plan for ``model``, by ``table`` (the request's generation) or the actor's own."""

    model: str
    table: Table | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Reconfigure:
    """A reload's new table; cooling notices of providers it no longer has are dropped."""

    table: Table = attrs.field(eq=False, repr=False)


@attrs.frozen
class TargetCooling:
    """Notice: every credential of this target (or its whole provider) waits until ``until``."""

    provider: str
    model: str | None
    until: float


@attrs.frozen
class ListModels:
    pass


Msg = Resolve | TargetCooling | ListModels | Reconfigure


class RoutingCore:
    def __init__(self, models: Mapping, aliases: Mapping[str, str], providers: Iterable[str],
                 priced: Callable[[str], bool]) -> None:
        self.table = Table.build(models, aliases, providers, priced)
        self.cooling: dict[tuple[str, str | None], float] = {}

    @property
    def models(self) -> Mapping[str, Plan]:
        return self.table.models

    @property
    def aliases(self) -> Mapping[str, str]:
        return self.table.aliases

    def resolve(self, model: str, now: float, table: Table | None = None) -> Plan:
        plan = (table or self.table).lookup(model)
        if self.cooling and len(plan.targets) > 1:
            ready = [t for t in plan.targets if not self._cool(t, now)]
            waiting = [t for t in plan.targets if self._cool(t, now)]
            plan = attrs.evolve(plan, targets=tuple(ready + waiting))
        return plan

    def reconfigure(self, table: Table) -> None:
        self.table = table
        self.cooling = {key: until for key, until in self.cooling.items() if key[0] in table.providers}

    def _cool(self, t: Target, now: float) -> bool:
        for key in ((t.provider, None), (t.provider, t.model)):
            until = self.cooling.get(key)
            if until is not None:
                if until > now:
                    return True
                del self.cooling[key]
        return False

    def model_names(self) -> list[str]:
        return self.table.model_names()


class RoutingActor(Actor):
    name = "routing"

    def __init__(self, core: RoutingCore) -> None:
        super().__init__()
        self.core = core

    def handle(self, msg: Msg, now: float):
        match msg:
            case Resolve(model, table):
                return self.core.resolve(model, now, table)
            case Reconfigure(table):
                return self.core.reconfigure(table)
            case TargetCooling(provider, model, until):
                key = (provider, model)
                self.core.cooling[key] = max(until, self.core.cooling.get(key, 0.0))
            case ListModels():
                return self.core.model_names()
            case _:
                raise TypeError(f"routing: unknown message {msg!r}")

    def snapshot(self) -> dict:
        return {
            "models": len(self.core.models),
            "aliases": len(self.core.aliases),
            "cooling_targets": [f"{p}/{m or '*'}" for (p, m) in self.core.cooling],
        }
