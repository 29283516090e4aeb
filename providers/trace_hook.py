"""Where an upstream call shows its passes to a transform trace.

The gateway's transform trace (``gateway.transform_trace``) wants to see what only the
providers see: the wire body after each adapter, the request as it leaves (URL,
headers, body) and the upstream's answer. Providers do not know about traces, so the
trace of the current attempt sits in a ``ContextVar`` (the attempt and its upstream
I/O run in one task, as for ``providers.propagation``). Untraced, it holds None: one
lookup per upstream request, and one per adapter chain that has adapters.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Mapping, Protocol


class TraceHook(Protocol):
    """What a provider tells the current attempt's trace; each call records one pass."""

    def adapted(self, name: str, body: Mapping[str, Any]) -> None:
        """The wire body after the adapter ``name`` (``"(built)"``: before any adapter)."""

    def sent(self, url: str, headers: Mapping[str, str], body: bytes) -> None:
        """The request as it leaves for the upstream."""

    def answered(self, status: int, headers: Mapping[str, str], body: bytes | None) -> None:
        """The upstream's answer: its status, headers and, when read whole, its body."""


#: the current attempt's trace, or None (the request is not traced)
transform_trace: ContextVar[TraceHook | None] = ContextVar("transform_trace", default=None)
