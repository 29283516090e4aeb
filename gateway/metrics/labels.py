"""Label values a scrape may carry: only what the config (or the admin API) named.

A label value is a time series of its own in Prometheus, so a client must not be able
to make new ones by naming things: a model name the config does not list becomes
``other``; a target the config does not list (reached through a ``provider/*`` price
or the ``provider/model`` direct syntax) becomes ``<provider>/other``. Key names come
from the config and the admin API, credential ids and providers from the config: an
operator's own, bounded lists. Request ids never appear.
"""

from __future__ import annotations

import attrs

#: the value of a label whose thing was never known (a refusal before the key was read)
NONE = "none"
OTHER = "other"


@attrs.frozen
class Labels:
    models: frozenset[str]  # model and alias names of the config
    targets: frozenset[str]  # "provider/model" labels the config names
    providers: frozenset[str]

    @classmethod
    def of(cls, config) -> "Labels":
        targets = {t for m in config.models.values() for t in m.targets}
        targets |= {t for t in config.aliases.values() if t not in config.models}
        targets |= {label for label in config.pricing if not label.endswith("/*")}
        models = {name for name in (*config.models, *config.aliases) if name != "*"}
        return cls(frozenset(models), frozenset(targets), frozenset(config.providers))

    def model(self, name: str | None) -> str:
        if name is None:
            return NONE
        return name if name in self.models else OTHER

    def target(self, label: str | None) -> str:
        if label is None:
            return NONE
        if label in self.targets:
            return label
        provider = label.partition("/")[0]
        return f"{provider}/{OTHER}" if provider in self.providers else OTHER

    def provider(self, name: str | None) -> str:
        if name is None:
            return NONE
        return name if name in self.providers else OTHER


def key(name: str | None) -> str:
    return NONE if name is None else name
