"""Which adapters a target runs, in what order.

A provider family is its protocol plus default adapters (``FAMILY_DEFAULTS``, by the
protocol the upstream speaks, so a simulated upstream of a family gets them too). A
provider's chain for one upstream model is: the family's defaults, then the provider's
``adapters``, then those of its ``model_adapters`` entry for that model (the exact name,
else the longest ``prefix*`` pattern that matches); an adapter named again later
replaces the earlier one (its parameters win). The chain then runs in the fixed
``ORDER``, whatever order the config lists them in:

``system_prefix``, ``one_sampling_param``, ``default_max_tokens``, ``cap_max_tokens``,
``max_completion_tokens``, ``rename_params``, ``drop_params``, ``extra_headers``,
``strip_reasoning``.

So a default limit is capped, then renamed for the vendor; renames and drops see the
finished body and have the last word on it.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs

from protocols.unified import UnifiedRequest, UnifiedResponse
from providers.adapters.answer import AnswerAdapter, StripReasoning
from providers.seams import Provider
from providers.adapters.request import (Ask, CapMaxTokens, DefaultMaxTokens, DropParams, ExtraHeaders,
                                        MaxCompletionTokens, OneSamplingParam, RenameParams, RequestAdapter,
                                        SystemPrefix)
from providers.trace_hook import transform_trace

ORDER: tuple[type[RequestAdapter], ...] = (
    SystemPrefix, OneSamplingParam, DefaultMaxTokens, CapMaxTokens, MaxCompletionTokens, RenameParams,
    DropParams, ExtraHeaders, StripReasoning,
)
REGISTRY: Mapping[str, type[RequestAdapter]] = {cls.NAME: cls for cls in ORDER}
_RANK = {cls: i for i, cls in enumerate(ORDER)}

# Anthropic requires max_tokens; a request that set none gets this much room.
ANTHROPIC_DEFAULT_MAX_TOKENS = 8192
FAMILY_DEFAULTS: Mapping[str, tuple[RequestAdapter, ...]] = {
    "anthropic": (DefaultMaxTokens(value=ANTHROPIC_DEFAULT_MAX_TOKENS),),
}


@attrs.frozen
class Chain:
    """The adapters of one target, in ``ORDER``; the empty chain changes nothing."""

    adapters: tuple[RequestAdapter, ...] = ()
    # the answer adapters among them: what a translated answer's events pass through
    answers: tuple[AnswerAdapter, ...] = attrs.field(init=False, eq=False, repr=False)

    # the output limit the chain sends when the client set none, and the cap it applies
    default_max_tokens: int | None = attrs.field(init=False, eq=False, repr=False)
    cap_max_tokens: int | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "answers", tuple(a for a in self.adapters if isinstance(a, AnswerAdapter)))
        object.__setattr__(self, "default_max_tokens", next(
            (a.value for a in self.adapters if isinstance(a, DefaultMaxTokens)), None))
        object.__setattr__(self, "cap_max_tokens", next(
            (a.value for a in self.adapters if isinstance(a, CapMaxTokens)), None))

    def sent_max_tokens(self, thinking_budget: int = 0) -> int | None:
        """The output limit a request that set none is sent through this chain
        (``default_max_tokens``, with an Anthropic thinking budget on top, then
        ``cap_max_tokens``), or None when it is sent none and the upstream decides."""
        if self.default_max_tokens is None:
            return None
        limit = self.default_max_tokens + thinking_budget
        return limit if self.cap_max_tokens is None else min(limit, self.cap_max_tokens)

    @classmethod
    def of(cls, adapters: Iterable[RequestAdapter]) -> Chain:
        by_name: dict[str, RequestAdapter] = {}
        for adapter in adapters:
            by_name[adapter.NAME] = adapter
        return cls(tuple(sorted(by_name.values(), key=lambda a: _RANK[type(a)])))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.NAME for a in self.adapters)

    @property
    def edits_answers(self) -> bool:
        """Whether the target's answers are edited (and so never forwarded as sent)."""
        return bool(self.answers)

    def body(self, body: dict, req: UnifiedRequest, protocol: str) -> dict:
        """The upstream body after every request adapter (``body`` is the caller's)."""
        if not self.adapters:
            return body
        ask = Ask(protocol, req.max_tokens)
        trace = transform_trace.get()  # a traced request shows the body after each adapter
        if trace is not None:
            trace.adapted("(built)", body)
        for adapter in self.adapters:
            body = adapter.edit_body(body, ask)
            if trace is not None:
                trace.adapted(adapter.NAME, body)
        return body

    def headers(self, headers: dict) -> dict:
        for adapter in self.adapters:
            headers = adapter.edit_headers(headers)
        return headers

    def events(self, events: tuple) -> tuple:
        for adapter in self.answers:
            events = adapter.edit_events(events)
        return events

    def response(self, response: UnifiedResponse) -> UnifiedResponse:
        for adapter in self.answers:
            response = adapter.edit_response(response)
        return response


NO_ADAPTERS = Chain()


def _pattern_matches(pattern: str, model: str) -> bool:
    return model == pattern or (pattern.endswith("*") and model.startswith(pattern[:-1]))


@attrs.frozen
class ProviderAdapters:
    """One provider's adapters: the family's, its own, and per upstream model; the
    chain of each model is made once and kept."""

    protocol: str
    provider: tuple[RequestAdapter, ...] = ()
    by_model: Mapping[str, tuple[RequestAdapter, ...]] = attrs.field(factory=dict)
    _chains: dict[str, Chain] = attrs.field(factory=dict, eq=False, repr=False)

    def model_entry(self, model: str) -> tuple[RequestAdapter, ...]:
        if model in self.by_model:
            return self.by_model[model]
        patterns = [p for p in self.by_model if p.endswith("*") and _pattern_matches(p, model)]
        return self.by_model[max(patterns, key=len)] if patterns else ()

    def chain(self, model: str) -> Chain:
        found = self._chains.get(model)
        if found is None:
            found = Chain.of([*FAMILY_DEFAULTS.get(self.protocol, ()), *self.provider, *self.model_entry(model)])
            if len(self._chains) < 4096:  # model names come from config and clients: bounded
                self._chains[model] = found
        return found


def for_protocol(protocol: str) -> ProviderAdapters:
    """The family defaults alone (a provider with no adapters configured)."""
    return ProviderAdapters(protocol)


def chain_of(provider: Provider, model: str) -> Chain:
    """The chain a provider runs for ``model`` (none for a provider without adapters)."""
    adapters = getattr(provider, "adapters", None)
    return NO_ADAPTERS if adapters is None else adapters.chain(model)


def sent_max_tokens(provider: Provider, model: str, thinking_budget: int) -> int | None:
    """What ``Chain.sent_max_tokens`` says for this target; the thinking budget counts
    only where ``default_max_tokens`` adds it (Anthropic)."""
    return chain_of(provider, model).sent_max_tokens(thinking_budget if provider.protocol == "anthropic" else 0)


def passes_through(provider: Provider, req: UnifiedRequest, model: str) -> bool:
    """Whether the upstream's answer bytes go to the client as sent: the same protocol
    on both sides, and no adapter of the target edits answers."""
    return req.protocol == provider.protocol and not chain_of(provider, model).edits_answers
