"""OpenAI's native Responses API: over HTTP (``POST {base_url}/responses``) and, when
the provider is set to ``websocket`` and the client came over a WebSocket, over one
upstream socket per client connection (``ws(s)://{base_url}/responses``).

Responses streams always end with usage in ``response.completed``, so nothing is
injected: a Responses client's stream is forwarded byte for byte, on either transport.
Translated requests are stateless (``store: false``). Whole (non-streamed) answers
always go over HTTP: the WebSocket mode is a stream of events.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from providers.http11 import Pool

from protocols import openai_responses
from protocols.redact import NO_SECRETS, Redactor
from protocols.unified import UnifiedRequest
from providers.adapters import ProviderAdapters, for_protocol, passes_through
from providers.base import Completion, FrameReader, OpenFrames, SSEFramer, bearer_headers, encode_body, fetch_completion
from providers.responses_socket import RESPONSES_WEBSOCKET_BETA, SocketTarget, SocketTurn, current_session
from providers.seams import Credential


def websocket_url(base_url: str) -> str:
    """``http(s)://host/v1`` -> ``ws(s)://host/v1/responses``."""
    scheme, sep, rest = base_url.partition("://")
    return {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme) + sep + rest + "/responses"


class OpenAIResponsesProvider:
    protocol = openai_responses.NAME
    SIM_SUFFIX = "/v1"

    def __init__(self, name: str, base_url: str, client: Pool, headers: dict | None = None,
                 redactor: Redactor = NO_SECRETS, websocket: bool = False,
                 adapters: ProviderAdapters | None = None) -> None:
        self.name = name
        self.adapters = adapters or for_protocol(self.protocol)
        self.redactor = redactor  # upstream text on its way to a client or a log loses every secret
        self.url = f"{base_url}/responses"
        self.socket_url = websocket_url(base_url)
        self.client = client
        self.extra_headers = dict(headers or {})
        self.websocket = websocket  # streams of a client WebSocket session go over the upstream's socket

    def headers(self, credential: Credential, model: str = "") -> dict:
        return self.adapters.chain(model).headers(bearer_headers(credential, self.extra_headers))

    def body(self, req: UnifiedRequest, model: str) -> dict:
        body = openai_responses.build_request(req, model)
        return self.adapters.chain(model).body(body, req, self.protocol)

    def socket_target(self, credential: Credential, model: str = "") -> SocketTarget:
        """The upstream socket for ``credential``: its key in the handshake, with the
        provider's headers and the WebSocket mode's beta flag."""
        headers = self.adapters.chain(model).headers({k.lower(): v for k, v in self.extra_headers.items()})
        headers["authorization"] = f"Bearer {credential.secret.value}"
        headers["openai-beta"] = RESPONSES_WEBSOCKET_BETA
        return SocketTarget(self.name, credential.id, self.socket_url, headers,
                            connect_timeout_s=self.client.connect_timeout, proxy=self.client.proxy,
                            ssl_context=self.client.ssl_context)

    @asynccontextmanager
    async def stream(self, req: UnifiedRequest, model: str, credential: Credential) -> AsyncIterator[FrameReader | SocketTurn]:
        body = self.body(req, model)
        decoder = openai_responses.StreamDecoder(light=passes_through(self, req, model))
        session = current_session.get() if self.websocket else None
        if session is not None:
            async with session.turn(self.socket_target(credential, model), body, decoder, self.redactor) as turn:
                yield turn
            return
        async with OpenFrames(self.client, self.url, self.headers(credential, model), encode_body(body),
                              SSEFramer(decoder), self.redactor) as reader:
            del body  # sent: not kept for the stream's length (see ``OpenFrames``)
            yield reader

    async def complete(self, req: UnifiedRequest, model: str, credential: Credential) -> Completion:
        return await fetch_completion(self.client, self.url, self.headers(credential, model),
                                      encode_body(self.body(req, model)),
                                      openai_responses.parse_response,
                                      self.redactor)
