"""How many output tokens a request's credit hold covers.

The hold is priced before any target is tried, so it must cover what the dearest
answer could cost: the output limit each target of the plan will actually be sent.
A client's own limit is that limit (capped by the model's allowance, so a huge valid
limit cannot lock up a key's credit); without one, each target is sent what its
adapters say (``default_max_tokens``, an Anthropic thinking budget on top, then
``cap_max_tokens``), or nothing -- the upstream's own default, which the gateway cannot
know, counted as ``default_hold_output_tokens``. A model's ``hold_output_tokens`` is the
operator's word and replaces all of this.
"""

from __future__ import annotations

from typing import Mapping

from actors.routing import Plan
from protocols.reasoning import budget_of
from protocols.unified import UnifiedRequest
from providers.adapters import sent_max_tokens
from providers.seams import Provider


def output_allowance(plan: Plan, providers: Mapping[str, Provider], request: UnifiedRequest, default: int) -> int:
    """The model's allowance for this request: the largest limit a target is sent."""
    if plan.hold_output_tokens:
        return plan.hold_output_tokens
    budget = budget_of(request.reasoning) or 0
    thinking = budget if budget > 0 else 0
    allowance = 0
    for target in plan.targets:
        provider = providers.get(target.provider)
        sent = sent_max_tokens(provider, target.model, thinking) if provider is not None else None
        allowance = max(allowance, sent or default)
    return allowance or default


def held_output_tokens(plan: Plan, providers: Mapping[str, Provider], request: UnifiedRequest, default: int) -> int:
    """The output tokens the hold covers: the client's limit within the allowance."""
    allowance = output_allowance(plan, providers, request, default)
    return min(request.max_tokens, allowance) if request.max_tokens else allowance
