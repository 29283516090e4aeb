"""A local OTLP/HTTP trace receiver: what a collector would get from the gateway.

A real HTTP server on a raw trio socket (h11) that takes ``POST /v1/traces``, decodes
each body as an ``ExportTraceServiceRequest`` with ``opentelemetry-proto`` (the
protocol's own generated classes) and keeps the spans, with the raw bodies for
checks that must see every byte sent.
"""

from __future__ import annotations

import gzip
import zlib
from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import h11
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_INTERNAL: "internal"}
STATUSES = {Status.STATUS_CODE_UNSET: "unset", Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


@attrs.frozen
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict
    status: str
    resource: dict


@attrs.define
class OtlpReceiver:
    spans: list[ReceivedSpan] = attrs.field(factory=list)
    bodies: list[bytes] = attrs.field(factory=list)  # every export request, decompressed
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, [listener])

    def by_kind(self, kind: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.kind == kind]

    async def _handle(self, stream: trio.SocketStream) -> None:
        h = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read(stream, h)
                if request is None:
                    return
                status = 404
                reply = b""
                if request.method == b"POST" and request.target == b"/v1/traces":
                    encoding = dict(request.headers).get(b"content-encoding", b"")
                    self._take(_decompressed(body, encoding))
                    status, reply = 200, ExportTraceServiceResponse().SerializeToString()
                await stream.send_all(h.send(h11.Response(status_code=status, headers=[
                    ("content-type", "application/x-protobuf"), ("content-length", str(len(reply)))]))
                    + h.send(h11.Data(data=reply)) + h.send(h11.EndOfMessage()))
                h.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    def _take(self, body: bytes) -> None:
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(ReceivedSpan(
                        name=span.name, kind=KINDS.get(span.kind, str(span.kind)), trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=STATUSES[span.status.code], resource=resource))


def _decompressed(body: bytes, encoding: bytes) -> bytes:
    if encoding == b"gzip":
        return gzip.decompress(body)
    if encoding == b"deflate":
        return zlib.decompress(body)
    return body


async def _read(stream: trio.SocketStream, h: h11.Connection) -> tuple[h11.Request | None, bytes]:
    request = None
    body = []
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            h.receive_data(data)
            continue
        if type(event) is h11.ConnectionClosed:
            return None, b""
        if type(event) is h11.Request:
            request = event
        elif type(event) is h11.Data:
            body.append(bytes(event.data))
        elif type(event) is h11.EndOfMessage:
            return request, b"".join(body)


@asynccontextmanager
async def running_receiver() -> AsyncIterator[OtlpReceiver]:
    """A receiver serving for the block (stopped on the way out); its spans stay readable."""
    receiver = OtlpReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        yield receiver
        nursery.cancel_scope.cancel()
