"""Token counts (``count_tokens``, ``countTokens``): the upstream's own where it has one.

The rule: the plan's first target (the one that would serve the request now) is asked
when its family has a counting endpoint (Anthropic, Gemini) and its provider's
``count_tokens`` is ``"upstream"`` (the default): on one leased credential, the request
translated to that family, with its adapters. Anything else -- a Chat or Responses
target, ``"estimate"``, no credential free, an upstream error, no answer within
``streaming.ttfb_timeout_s`` -- is answered with the gateway's own estimate
(``protocols.tokens``). Counting is never metered: no credit is held or charged,
nothing reaches the ledger, and a failed count rests no credential (upstream counting
endpoints are free; their rate limits are the upstream's business). The answer's
``x-tollhouse-token-count`` header says which it was: ``upstream`` or ``estimate``.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

import attrs
import trio

from actors.credentials import Lease, NoneAvailable, Release
from actors.routing import Resolve
from protocols.errors import GatewayError, UpstreamError
from protocols.unified import UnifiedRequest

log = logging.getLogger("tollhouse.count")


class Source(enum.Enum):
    UPSTREAM = "upstream"
    ESTIMATE = "estimate"


@attrs.frozen
class Counted:
    """An upstream's count: the number, the target that counted, its answer as sent
    (forwarded as is to a client of the same protocol) and that protocol."""

    tokens: int
    target: str
    body: bytes
    protocol: str


async def upstream_count(runtime: Any, request: UnifiedRequest) -> Counted | None:
    """The first target's own count, or None when the estimate must answer."""
    try:
        plan = await runtime.actors.routing.ask(Resolve(request.model))
    except GatewayError:
        return None  # an unknown model is still counted, by the estimate
    if not plan.targets:
        return None
    target = plan.targets[0]
    provider = runtime.providers.get(target.provider)
    settings = runtime.config.providers.get(target.provider)
    if provider is None or settings is None or settings.count_tokens != "upstream" \
            or not hasattr(provider, "count_tokens"):
        return None
    leases = runtime.dispatcher.leases  # the shared backend confirms it across instances
    lease = await leases.lease(Lease(target.provider, target.model))
    if isinstance(lease, NoneAvailable):
        return None
    try:
        with trio.move_on_after(runtime.config.streaming.ttfb_timeout_s):
            tokens, body = await provider.count_tokens(request, target.model, lease.credential)
            return Counted(tokens, target.label, body, provider.protocol)
        log.info("token count by %s timed out; answered with the estimate", target.label)
    except UpstreamError as exc:
        log.info("token count by %s failed (%s); answered with the estimate", target.label, type(exc).__name__)
    finally:
        with trio.move_on_after(runtime.config.streaming.settle_timeout_s, shield=True):
            await leases.release(lease, Release(lease.lease_id))
    return None
