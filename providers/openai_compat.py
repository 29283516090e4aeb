"""OpenAI-compatible Chat Completions upstreams (OpenAI, Azure, vLLM, Groq, ...).

Streams ask for ``stream_options.include_usage`` so every stream can be metered
exactly; when the client did not ask for it, the usage-only chunk it produces is
dropped from the client's stream. Some upstreams reject the field: a 400/422 whose
body names ``stream_options`` or ``include_usage`` is retried once without it, and
the upstream model is remembered so later requests do not pay for the retry. Any
other 400/422 goes to the client unretried.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from providers.http11 import Pool

from protocols import openai_chat
from protocols.redact import NO_SECRETS, Redactor
from protocols.errors import UpstreamBadRequest
from protocols.unified import UnifiedRequest
from providers.adapters import ProviderAdapters, for_protocol, passes_through
from providers.base import Completion, FrameReader, SSEFramer, bearer_headers, encode_body, fetch_completion, reading, send
from providers.seams import Credential

_REJECTS = (b"stream_options", b"include_usage")


class OpenAICompatProvider:
    protocol = openai_chat.NAME
    SIM_SUFFIX = "/v1"

    def __init__(self, name: str, base_url: str, client: Pool, headers: dict | None = None,
                 redactor: Redactor = NO_SECRETS, adapters: ProviderAdapters | None = None) -> None:
        self.name = name
        self.adapters = adapters or for_protocol(self.protocol)
        self.redactor = redactor  # upstream text on its way to a client or a log loses every secret
        self.url = f"{base_url}/chat/completions"
        self.client = client
        self.extra_headers = dict(headers or {})
        self.rejects_stream_options: set[str] = set()

    def headers(self, credential: Credential, model: str = "") -> dict:
        return self.adapters.chain(model).headers(bearer_headers(credential, self.extra_headers))

    def body(self, req: UnifiedRequest, model: str, include_usage: bool) -> bytes:
        body = openai_chat.build_request(req, model, include_usage=include_usage)
        return encode_body(self.adapters.chain(model).body(body, req, self.protocol))

    @asynccontextmanager
    async def stream(self, req: UnifiedRequest, model: str, credential: Credential) -> AsyncIterator[FrameReader]:
        inject = not req.include_usage and model not in self.rejects_stream_options
        while True:
            body = self.body(req, model, inject or req.include_usage)
            try:
                response = await send(self.client, self.url, self.headers(credential, model), body, stream=True,
                                      redactor=self.redactor)
                break
            except UpstreamBadRequest as exc:
                if not inject or exc.upstream_status not in (400, 422) or not _names_stream_options(exc):
                    raise
                self.rejects_stream_options.add(model)
                inject = False
        del body  # sent: not kept for the stream's length (see ``OpenFrames``)
        decoder = openai_chat.StreamDecoder(light=passes_through(self, req, model))
        async with reading(response, SSEFramer(decoder, drop_usage_only=inject), self.redactor) as reader:
            yield reader

    async def complete(self, req: UnifiedRequest, model: str, credential: Credential) -> Completion:
        return await fetch_completion(self.client, self.url, self.headers(credential, model),
                                      self.body(req, model, False),
                                      openai_chat.parse_response, self.redactor)


def _names_stream_options(exc: UpstreamBadRequest) -> bool:
    body = exc.upstream_body or b""
    return any(word in body for word in _REJECTS)
