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


@attrs.frozen
class Resolve:
    model: str


@attrs.frozen
class TargetCooling:
    """Notice: every credential of this target (or its whole provider) waits until ``until``."""

    provider: str
    model: str | None
    until: float


@attrs.frozen
class ListModels:
    pass


Msg = Resolve | TargetCooling | ListModels


class RoutingCore:
    def __init__(self, models: Mapping, aliases: Mapping[str, str], providers: Iterable[str],
                 priced: Callable[[str], bool]) -> None:
        self.models = {
            name: Plan(name, tuple(Target(*t.split("/", 1)) for t in m.targets), m.hold_output_tokens)
            for name, m in models.items()
        }
        self.aliases = dict(aliases)
        self.providers = frozenset(providers)
        self.priced = priced
        self.cooling: dict[tuple[str, str | None], float] = {}

    def resolve(self, model: str, now: float) -> Plan:
        name = self.aliases.get(model, model)
        plan = self.models.get(name) if name != CATCH_ALL else None
        if plan is None:
            provider, sep, upstream = name.partition("/")
            if sep and upstream and provider in self.providers:
                if not self.priced(name):
                    raise NotFound(f"The model '{model}' is not served here: no price is configured for it.",
                                   param="model")
                plan = Plan(name, (Target(provider, upstream),))
            elif CATCH_ALL in self.models:
                plan = self.models[CATCH_ALL]
            else:
                raise NotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        if self.cooling and len(plan.targets) > 1:
            ready = [t for t in plan.targets if not self._cool(t, now)]
            waiting = [t for t in plan.targets if self._cool(t, now)]
            plan = attrs.evolve(plan, targets=tuple(ready + waiting))
        return plan

    def _cool(self, t: Target, now: float) -> bool:
        for key in ((t.provider, None), (t.provider, t.model)):
            until = self.cooling.get(key)
            if until is not None:
                if until > now:
                    return True
                del self.cooling[key]
        return False

    def model_names(self) -> list[str]:
        return sorted([n for n in self.models if n != CATCH_ALL] + list(self.aliases))


class RoutingActor(Actor):
    name = "routing"

    def __init__(self, core: RoutingCore) -> None:
        super().__init__()
        self.core = core

    def handle(self, msg: Msg, now: float):
        match msg:
            case Resolve(model):
                return self.core.resolve(model, now)
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
