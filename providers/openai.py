"""OpenAI's native Responses API over HTTP (``POST {base_url}/responses``).

Responses streams always end with usage in ``response.completed``, so nothing is
injected: a Responses client's stream is forwarded byte for byte. Translated
requests are stateless (``store: false``), because the gateway keeps no responses
for a later ``previous_response_id``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from providers.http11 import Pool

from protocols import openai_responses
from protocols.redact import NO_SECRETS, Redactor
from providers.base import Completion, FrameReader, SSEFramer, bearer_headers, encode_body, fetch_completion, open_frames


class OpenAIResponsesProvider:
    protocol = openai_responses.NAME
    SIM_SUFFIX = "/v1"

    def __init__(self, name: str, base_url: str, client: Pool, headers: dict | None = None,
                 redactor: Redactor = NO_SECRETS) -> None:
        self.name = name
        self.redactor = redactor  # upstream text on its way to a client or a log loses every secret
        self.url = f"{base_url}/responses"
        self.client = client
        self.extra_headers = dict(headers or {})

    def headers(self, credential: Any) -> dict:
        return bearer_headers(credential, self.extra_headers)

    @asynccontextmanager
    async def stream(self, req, model: str, credential: Any) -> AsyncIterator[FrameReader]:
        body = openai_responses.build_request(req, model)
        framer = SSEFramer(openai_responses.StreamDecoder(light=req.protocol == self.protocol))
        async with open_frames(self.client, self.url, self.headers(credential), encode_body(body), framer,
                               self.redactor) as reader:
            yield reader

    async def complete(self, req, model: str, credential: Any) -> Completion:
        body = openai_responses.build_request(req, model)
        return await fetch_completion(self.client, self.url, self.headers(credential), encode_body(body),
                                      openai_responses.parse_response, self.redactor)
