"""Google Gemini upstreams (``generativelanguage.googleapis.com`` and lookalikes).

Streams ask for ``?alt=sse``: SSE is what every Gemini SDK uses and what the gateway's
decoders read fastest. The one exception is a Gemini client that itself asked for the
JSON-array framing (``streamGenerateContent`` without ``alt=sse``): the upstream is
asked for the same framing, so the bytes it sends can be forwarded unchanged.

Gemini sends no ``Retry-After`` header; a 429's wait is a ``RetryInfo.retryDelay`` in
the error body, which ``protocols.retry_after`` reads at the boundary in ``send``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import quote

from providers.http11 import Pool

from protocols import gemini
from protocols.redact import NO_SECRETS, Redactor
from protocols.errors import UpstreamProtocolError
from protocols.json_array import ArrayElement, JsonArraySplitter
from protocols.sse import SSEEvent
from protocols.unified import ErrorEvent
from protocols.unified import UnifiedRequest
from providers.adapters import ProviderAdapters, for_protocol, passes_through
from providers import counting
from providers.base import Completion, Frame, FrameReader, OpenFrames, SSEFramer, encode_body, fetch_completion, send
from providers.seams import Credential

API_VERSIONS = ("/v1beta", "/v1", "/v1alpha")


class JsonArrayFramer:
    """A streamed JSON array -> frames, through the Gemini ``StreamDecoder``.

    Each element's frame holds every byte since the previous one, so forwarding the
    raws reproduces the body. An element that is an error is held back until the array
    closes (or the body ends): the dispatcher stops reading at an error, and the
    client's array must still receive its closing bracket.
    """

    def __init__(self, decoder: gemini.StreamDecoder) -> None:
        self.splitter = JsonArraySplitter()
        self.decoder = decoder
        self._held: list[Frame] = []

    def _frames(self, elements: list[ArrayElement], final: bool = False) -> list[Frame]:
        out: list[Frame] = []
        for el in elements:
            if el.error is not None:
                events: tuple = (ErrorEvent(UpstreamProtocolError(
                    f"upstream sent a malformed Gemini JSON-array stream: {el.error}")),)
            else:
                events = tuple(self.decoder.feed(SSEEvent(el.raw, el.data)))
            frame = Frame(el.raw, events, payload=None if events else el.data)
            is_error = any(isinstance(ev, ErrorEvent) for ev in events)
            if self._held or (is_error and el.data is not None):
                self._held.append(frame)
                if el.data is None:
                    out.extend(self._held)
                    self._held.clear()
            else:
                out.append(frame)
        if final and self._held:
            out.extend(self._held)
            self._held.clear()
        return out

    def feed(self, chunk: bytes) -> list[Frame]:
        return self._frames(self.splitter.feed(chunk))

    def close(self) -> list[Frame]:
        return self._frames(self.splitter.close(), final=True)


class GeminiProvider:
    protocol = gemini.NAME
    SIM_SUFFIX = ""

    def __init__(self, name: str, base_url: str, client: Pool, headers: dict | None = None,
                 redactor: Redactor = NO_SECRETS, adapters: ProviderAdapters | None = None) -> None:
        self.name = name
        self.adapters = adapters or for_protocol(self.protocol)
        self.redactor = redactor  # upstream text on its way to a client or a log loses every secret
        base = base_url.rstrip("/")
        self.base = base if base.endswith(API_VERSIONS) else base + "/v1beta"
        self.client = client
        self.extra_headers = dict(headers or {})

    def headers(self, credential: Credential, model: str = "") -> dict:
        return self.adapters.chain(model).headers({
            "x-goog-api-key": credential.secret.value,
            "content-type": "application/json",
            "accept-encoding": "identity",
            **self.extra_headers,
        })

    def body(self, req: UnifiedRequest, model: str) -> bytes:
        return encode_body(self.wire_body(req, model))

    def wire_body(self, req: UnifiedRequest, model: str) -> dict:
        body = gemini.build_request(req, model)
        return self.adapters.chain(model).body(body, req, self.protocol)

    def url(self, model: str, method: str, sse: bool = False) -> str:
        name = model[len("models/"):] if model.startswith("models/") else model
        return f"{self.base}/models/{quote(name, safe='/-._~+=@')}:{method}" + ("?alt=sse" if sse else "")

    @staticmethod
    def wants_sse(req: UnifiedRequest) -> bool:
        """SSE, unless a Gemini client asked for the JSON array (then forward as is)."""
        extra = req.extra if isinstance(req.extra, Mapping) else {}
        return not (req.protocol == gemini.NAME and extra.get("gemini_sse") is False)

    @asynccontextmanager
    async def stream(self, req: UnifiedRequest, model: str, credential: Credential) -> AsyncIterator[FrameReader]:
        sse = self.wants_sse(req)
        decoder = gemini.StreamDecoder(light=passes_through(self, req, model))
        framer = SSEFramer(decoder) if sse else JsonArrayFramer(decoder)
        url = self.url(model, "streamGenerateContent", sse)
        async with OpenFrames(self.client, url, self.headers(credential, model), self.body(req, model), framer,
                              self.redactor) as reader:  # the body is not held here: ``OpenFrames`` lets it go
            yield reader

    async def complete(self, req: UnifiedRequest, model: str, credential: Credential) -> Completion:
        return await fetch_completion(self.client, self.url(model, "generateContent"), self.headers(credential, model),
                                      self.body(req, model), gemini.parse_response, self.redactor)

    async def count_tokens(self, req: UnifiedRequest, model: str, credential: Credential) -> tuple[int, bytes]:
        """``models/{model}:countTokens``: the upstream's count and its answer as sent."""
        body = encode_body(counting.gemini_body(self.wire_body(req, model), model))
        answer = await send(self.client, self.url(model, "countTokens"), self.headers(credential, model), body,
                            stream=False, redactor=self.redactor)
        return counting.tokens_in(answer.content, counting.GEMINI_FIELD), answer.content
