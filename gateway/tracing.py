"""The seam between the request path and OpenTelemetry traces.

The front doors open one ``RequestTrace`` per client request (an HTTP call, a WebSocket
turn) and hand it to the dispatcher on the ``Call``; each upstream attempt runs inside
``trace.attempt(...)``. What a request came to reaches the trace through the observers
(``gateway.observe.Served``), after its settlement.

Traces are optional (the ``tollhouse[otel]`` extra) and off unless the config has a
``tracing`` section. Off, the request path meets only ``NO_TRACING``: methods that return
shared ``nullcontext``s, and nothing here or on the hot path imports ``opentelemetry``.
On, ``gateway.otel`` (imported only then) holds the real implementation.
"""

from __future__ import annotations

import importlib
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Iterable, Protocol

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.observe import Served, Transport
    from gateway.request import Request
    from providers.seams import Provider

#: what ``pip`` needs to make tracing available
INSTALL_HINT = "pip install 'tollhouse[otel]'"
#: the modules the real implementation imports: all present, or tracing is refused
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")


class RequestTrace(Protocol):
    """The trace of one client request, open while the request runs."""

    def attempt(self, req: "Request", index: int, provider: Provider) -> AbstractContextManager[object]:
        """One upstream attempt (``req.attempts[index]`` on ``provider``): every upstream
        request made inside it carries the attempt's trace context."""
        ...


class Tracing(Protocol):
    """What the gateway traces with; its ``served`` hears each request's record."""

    enabled: bool

    def request(self, request_id: str, protocol: str, transport: "Transport",
                headers: Iterable[tuple[bytes, bytes]]) -> AbstractContextManager[RequestTrace]:
        """The trace of a request, continuing the client's ``traceparent`` if it sent one."""
        ...

    def served(self, record: "Served") -> None: ...

    async def aclose(self) -> None:
        """Export what is still buffered (bounded) and stop."""
        ...


class _NoTrace:
    """A request that is not traced: every attempt is a shared no-op context."""

    _attempt = nullcontext()

    def attempt(self, req: "Request", index: int, provider: Provider) -> AbstractContextManager[object]:
        return self._attempt


NO_TRACE: RequestTrace = _NoTrace()


class _NoTracing:
    """Tracing off: costs a method call per request and per attempt."""

    enabled = False
    _request = nullcontext(NO_TRACE)

    def request(self, request_id: str, protocol: str, transport: "Transport",
                headers: Iterable[tuple[bytes, bytes]]) -> AbstractContextManager[RequestTrace]:
        return self._request

    def served(self, record: "Served") -> None:
        return None

    async def aclose(self) -> None:
        return None


NO_TRACING: Tracing = _NoTracing()


def missing_modules() -> list[str]:
    """The modules tracing needs that cannot be imported (empty when the extra is installed)."""
    missing = []
    for name in OTEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def tracing_for(config: "Config") -> Tracing:
    """The config's tracing: off without a ``tracing`` section; the extra is then imported."""
    if config.tracing is None:
        return NO_TRACING
    from gateway.otel import OtelTracing  # only here: tracing off never imports opentelemetry

    return OtelTracing(config)
