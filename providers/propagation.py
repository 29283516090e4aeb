"""The trace context an upstream request carries (W3C ``traceparent``, ``tracestate``).

The gateway sets it for the length of one upstream attempt (``gateway.otel``); every
upstream HTTP request made inside it (``providers.base.send``) and the handshake of an
upstream WebSocket opened inside it carry these headers. A ``ContextVar``, because the
attempt and its upstream I/O run in one task and providers do not know about traces:
untraced, it holds nothing and costs one lookup per upstream request.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Mapping

#: header (name, value) pairs, names lower-case; empty when the request is not traced
upstream_trace: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("upstream_trace", default=())


def with_trace(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` plus the current trace context, replacing any trace headers they had."""
    trace = upstream_trace.get()
    if not trace:
        return headers
    names = {name for name, _ in trace}
    return {**{k: v for k, v in headers.items() if k.lower() not in names}, **dict(trace)}
