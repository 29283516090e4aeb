"""OpenTelemetry traces: a SERVER span per client request, a CLIENT span per upstream attempt.

Imported only when the config has a ``tracing`` section (``gateway.tracing.tracing_for``).
The gateway keeps its own ``TracerProvider`` -- never the process-wide one, which a host
application or another library may own -- sampled by ``ParentBased(TraceIdRatioBased)``
(a client's sampling decision in its ``traceparent`` is kept; a new trace is sampled
at ``sample_ratio``) and exported in batches over OTLP/HTTP from the SDK's own worker
thread, so the event loop only queues ended spans.

Attributes follow the GenAI semantic conventions (``gen_ai.*``: the provider, the
operation, the request and response models, token usage) beside the gateway's own
(``tollhouse.*``: key name, target, credential id, end reason, provenance, cost). None
holds a secret or a prompt: the key's *name*, never the key; an error's class and kind,
never its message (which may quote a client's input or an upstream's body).

A request's span is named ``{operation} {model}`` once the model is known. Its status
is an error when the gateway or an upstream failed it (a 5xx, or an answer cut by an
upstream error, a timeout or the stop); a client's mistake (4xx) is recorded in
``error.type`` but is not an error of the server, as HTTP's conventions have it. An
attempt's status is an error when it failed; a failover shows as several attempts.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterable, Iterator

import trio
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.ending import Outcome
from gateway.redaction import redactor_for
from gateway.observe import Served, Transport
from gateway.request import Request
from protocols.errors import GatewayError
from protocols.unified import EndReason, Usage
from providers.propagation import upstream_trace
from providers.seams import Provider

log = logging.getLogger("tollhouse.otel")

#: the headers of the W3C trace context, as a client may send them
TRACE_HEADERS = (b"traceparent", b"tracestate")
#: GenAI operation names by wire protocol (``protocols.*.NAME``)
OPERATIONS = {"openai_chat": "chat", "openai_responses": "chat", "anthropic": "chat", "gemini": "generate_content"}
#: ``gen_ai.provider.name`` by provider family; a simulated provider is the gateway's own
PROVIDER_NAMES = {"openai_compat": "openai", "openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
SIMULATOR = "tollhouse.simulator"
#: end reasons that mean the gateway or an upstream failed the request
FAILED_ENDINGS = frozenset(r.value for r in (EndReason.UPSTREAM_ERROR, EndReason.GATEWAY_ERROR,
                                             EndReason.TIMEOUT, EndReason.SHUTDOWN))
EXPORT_TIMEOUT_S = 5.0  # one export request to the collector
SHUTDOWN_TIMEOUT_S = 5.0  # what a stop waits for the spans still buffered


def _version() -> str:
    try:
        return version("tollhouse")
    except PackageNotFoundError:
        return "0"


def provider_name(cfg: Any) -> str:
    """The ``gen_ai.provider.name`` of a configured provider."""
    if cfg.family == "simulator" or cfg.embedded:
        return SIMULATOR
    return PROVIDER_NAMES.get(cfg.family, cfg.family)


def usage_attributes(usage: Usage) -> dict[str, int]:
    """The GenAI token counts: input includes the cache's reads and writes, output the
    reasoning (the gateway's buckets are disjoint; the conventions' totals are not)."""
    return {
        "gen_ai.usage.input_tokens": usage.input + usage.cached_input + usage.cache_write,
        "gen_ai.usage.output_tokens": usage.output + usage.reasoning,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning,
    }


def failed(record: Served) -> bool:
    """Whether a request's span is an error: the gateway's or an upstream's failure."""
    return record.status >= 500 or record.reason in FAILED_ENDINGS


class OtelTracing:
    """The gateway's tracer; also an observer (``served``) that ends each request's span."""

    enabled = True

    def __init__(self, config: Any) -> None:
        cfg = config.tracing
        self.shutdown_timeout_s = SHUTDOWN_TIMEOUT_S
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name, "service.version": _version()}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)), shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=cfg.traces_url, timeout=EXPORT_TIMEOUT_S)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("tollhouse", _version())
        self.propagator = TraceContextTextMapPropagator()
        self.provider_names = {name: provider_name(p) for name, p in config.providers.items()}
        self.live: dict[str, RequestSpan] = {}  # request id -> its open span, until the request ends
        # client-named text (the model) passes it: a client may send a secret as a model name
        self.redactor = redactor_for(config)

    def use_redactor(self, redactor: Any) -> None:
        """The runtime's redactor after a reload brought new secrets (``Runtime.on_redactor``)."""
        self.redactor = redactor

    @contextmanager
    def request(self, request_id: str, protocol: str, transport: Transport,
                headers: Iterable[tuple[bytes, bytes]]) -> Iterator["RequestSpan"]:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in TRACE_HEADERS}
        parent = self.propagator.extract(carrier, context=Context()) if carrier else Context()
        operation = OPERATIONS.get(protocol, "chat")
        span = self.tracer.start_span(operation, context=parent, kind=SpanKind.SERVER, attributes={
            "gen_ai.operation.name": operation, "tollhouse.request_id": request_id,
            "tollhouse.client_protocol": protocol, "tollhouse.transport": transport.value})
        trace = RequestSpan(self, span, operation, transport)
        self.live[request_id] = trace
        try:
            yield trace
        finally:
            del self.live[request_id]
            span.end()

    def served(self, record: Served) -> None:
        trace = self.live.get(record.request_id)
        if trace is not None:
            trace.served(record)

    async def aclose(self) -> None:
        """Export what is buffered, then stop the exporter's thread: at most
        ``shutdown_timeout_s``, after which the spans still queued are given up."""
        with trio.move_on_after(self.shutdown_timeout_s, shield=True) as waited:
            await trio.to_thread.run_sync(self.provider.shutdown, abandon_on_cancel=True)
        if waited.cancelled_caught:
            log.warning("trace export did not finish within %.1f s; the spans still queued are dropped",
                        self.shutdown_timeout_s)


class RequestSpan:
    """One client request's SERVER span, and the CLIENT spans of its attempts."""

    def __init__(self, tracing: OtelTracing, span: Span, operation: str, transport: Transport) -> None:
        self.tracing = tracing
        self.span = span
        self.operation = operation
        self.transport = transport

    @contextmanager
    def attempt(self, req: Request, index: int, provider: Provider) -> Iterator[Span]:
        tracing = self.tracing
        attempt = req.attempts[index]
        protocol_operation = OPERATIONS.get(provider.protocol, "chat")
        system = tracing.provider_names.get(attempt.provider, attempt.provider)
        span = tracing.tracer.start_span(
            f"{protocol_operation} {attempt.model}", context=set_span_in_context(self.span), kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": protocol_operation, "gen_ai.provider.name": system, "gen_ai.system": system,
                "gen_ai.request.model": attempt.model, "gen_ai.request.stream": req.call.request.stream,
                "server.address": provider.client.host, "server.port": provider.client.port,
                "tollhouse.target": f"{attempt.provider}/{attempt.model}", "tollhouse.credential_id": attempt.credential,
                "tollhouse.attempt": index + 1})
        carrier: dict[str, str] = {}
        tracing.propagator.inject(carrier, context=set_span_in_context(span))
        token = upstream_trace.set(tuple(carrier.items()))
        error: BaseException | None = None
        try:
            yield span
        except BaseException as exc:
            error = exc
            raise
        finally:
            upstream_trace.reset(token)
            _end_attempt(span, req, index, error)

    def served(self, record: Served) -> None:
        span = self.span
        if record.model:
            model = self.tracing.redactor.text(record.model)
            span.update_name(f"{self.operation} {model}")
            span.set_attribute("gen_ai.request.model", model)
        attributes: dict[str, Any] = {"gen_ai.request.stream": record.stream, "tollhouse.status": record.status,
                                      "tollhouse.attempts": record.attempts}
        if self.transport is Transport.HTTP:
            attributes["http.response.status_code"] = record.status
        if record.target is not None:
            attributes["gen_ai.response.model"] = record.target.partition("/")[2]
            attributes["tollhouse.target"] = record.target
        if record.provider is not None:
            system = self.tracing.provider_names.get(record.provider, record.provider)
            attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = system
        optional = {"tollhouse.key_name": record.key_name, "tollhouse.credential_id": record.credential,
                    "tollhouse.end_reason": record.reason, "tollhouse.provenance": record.provenance,
                    "tollhouse.cost_micro_usd": record.cost_micro, "error.type": record.error,
                    "gen_ai.response.time_to_first_chunk": record.ttfb_s if record.stream else None}
        attributes.update({name: value for name, value in optional.items() if value is not None})
        if record.usage is not None:
            attributes.update(usage_attributes(record.usage))
        span.set_attributes(attributes)
        if failed(record):
            span.set_status(Status(StatusCode.ERROR, record.error_kind or record.reason or "failed"))


def _end_attempt(span: Span, req: Request, index: int, error: BaseException | None) -> None:
    """What the attempt came to, on its span, and the span ended."""
    attempt = req.attempts[index]
    span.set_attribute("tollhouse.attempt.outcome", attempt.outcome.value)
    problem = error if isinstance(error, GatewayError) else None
    if error is None:
        problem = req.meter.error if isinstance(req.meter.error, GatewayError) else None
        if attempt.outcome is Outcome.ANSWERED:
            span.set_attribute("gen_ai.response.model", attempt.model)
            if req.meter.response_id:
                span.set_attribute("gen_ai.response.id", req.meter.response_id)
            if req.meter.usage is not None:
                span.set_attributes(usage_attributes(req.meter.usage))
    elif problem is None and not isinstance(error, trio.Cancelled):
        problem = error  # a bug while making the attempt: its class is all that is told
    if problem is not None:
        span.set_attribute("error.type", type(problem).__name__)
        status = getattr(problem, "upstream_status", None)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_status(Status(StatusCode.ERROR, getattr(problem, "kind", "error")))
    span.end()
