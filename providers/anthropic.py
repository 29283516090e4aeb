"""Anthropic Messages upstreams (api.anthropic.com and compatible servers).

Anthropic authenticates with ``x-api-key`` and versions its API with the
``anthropic-version`` header. When the client is itself an Anthropic client, the
version and ``anthropic-beta`` headers it sent (kept in ``req.extra["anthropic_headers"]``
by the front door) are forwarded, because beta request fields such as
``context_management`` are rejected without their beta header; so is ``?beta=true``.
Headers configured for the provider are applied last and win. Streams always carry
usage (``message_start`` and ``message_delta``), so nothing is injected and a
same-protocol stream is forwarded byte for byte.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from providers.http11 import Pool

from protocols import anthropic_messages
from protocols.redact import NO_SECRETS, Redactor
from protocols.anthropic_wire import API_VERSION
from protocols.seams import StreamDecoder
from protocols.structured_output import AnswerToolDecoder, answer_tool, unwrap_response
from protocols.unified import UnifiedRequest, UnifiedResponse
from providers.adapters import ProviderAdapters, for_protocol, passes_through
from providers import counting
from providers.base import Completion, FrameReader, OpenFrames, SSEFramer, encode_body, fetch_completion, send
from providers.seams import Credential

PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


class AnthropicProvider:
    protocol = anthropic_messages.NAME
    SIM_SUFFIX = ""

    def __init__(self, name: str, base_url: str, client: Pool, headers: dict | None = None,
                 redactor: Redactor = NO_SECRETS, adapters: ProviderAdapters | None = None) -> None:
        self.name = name
        self.adapters = adapters or for_protocol(self.protocol)
        self.redactor = redactor  # upstream text on its way to a client or a log loses every secret
        self.url = f"{base_url}/v1/messages"
        self.client = client
        self.extra_headers = dict(headers or {})

    def headers(self, req: UnifiedRequest, credential: Credential, model: str = "") -> dict:
        headers = {
            "x-api-key": credential.secret.value,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept-encoding": "identity",
        }
        if req.protocol == self.protocol:
            passed = req.extra.get("anthropic_headers") or {}
            headers.update({k: v for k, v in passed.items() if k in PASSED_HEADERS and v})
        headers.update(self.extra_headers)
        return self.adapters.chain(model).headers(headers)

    def body(self, req: UnifiedRequest, model: str) -> bytes:
        return encode_body(self.wire_body(req, model))

    def wire_body(self, req: UnifiedRequest, model: str) -> dict:
        body = anthropic_messages.build_request(req, model)
        return self.adapters.chain(model).body(body, req, self.protocol)

    def url_for(self, req: UnifiedRequest) -> str:
        if req.protocol == self.protocol and req.extra.get("anthropic_beta_query"):
            return self.url + "?beta=true"
        return self.url

    @asynccontextmanager
    async def stream(self, req: UnifiedRequest, model: str, credential: Credential) -> AsyncIterator[FrameReader]:
        decoder: StreamDecoder = anthropic_messages.StreamDecoder(light=passes_through(self, req, model))
        tool = answer_tool(req, model)
        if tool is not None:  # the structured answer came as a tool call: the client gets text
            decoder = AnswerToolDecoder(decoder, tool)
        framer = SSEFramer(decoder)
        async with OpenFrames(self.client, self.url_for(req), self.headers(req, credential, model),
                              self.body(req, model), framer,
                              self.redactor) as reader:
            yield reader

    async def complete(self, req: UnifiedRequest, model: str, credential: Credential) -> Completion:
        tool = answer_tool(req, model)

        def parse(doc: Any) -> UnifiedResponse:
            return unwrap_response(anthropic_messages.parse_response(doc), tool)

        return await fetch_completion(self.client, self.url_for(req), self.headers(req, credential, model),
                                      self.body(req, model), parse, self.redactor)

    async def count_tokens(self, req: UnifiedRequest, model: str, credential: Credential) -> tuple[int, bytes]:
        """``POST /v1/messages/count_tokens``: the upstream's count and its answer as sent."""
        url = self.url + "/count_tokens" + ("?beta=true" if self.url_for(req) != self.url else "")
        body = encode_body(counting.anthropic_body(self.wire_body(req, model)))
        answer = await send(self.client, url, self.headers(req, credential, model), body, stream=False,
                            redactor=self.redactor)
        return counting.tokens_in(answer.content, counting.ANTHROPIC_FIELD), answer.content
