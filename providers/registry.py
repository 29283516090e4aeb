"""Provider families by name: configuration picks a class here, never an if/elif chain."""

from __future__ import annotations

from typing import Any

import httpx

from providers.anthropic import AnthropicProvider
from providers.gemini import GeminiProvider
from providers.openai import OpenAIResponsesProvider
from providers.openai_compat import OpenAICompatProvider

# family name -> provider class; the simulator family picks by the protocol it speaks.
FAMILIES: dict[str, type] = {
    "openai_compat": OpenAICompatProvider,
    "openai": OpenAIResponsesProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}
BY_PROTOCOL: dict[str, type] = {
    "gemini": GeminiProvider,
    "openai_chat": OpenAICompatProvider,
    "openai_responses": OpenAIResponsesProvider,
    "anthropic": AnthropicProvider,
}


def build(cfg: Any, client: httpx.AsyncClient, simulator_url: str | None) -> Any:
    """A provider object for one configured provider."""
    if cfg.family == "simulator" or cfg.embedded:
        cls = BY_PROTOCOL[cfg.protocol or "openai_chat"]
        base = cfg.base_url or (simulator_url or "") + getattr(cls, "SIM_SUFFIX", "")
    else:
        cls = FAMILIES[cfg.family]
        base = cfg.base_url
    return cls(cfg.name, base, client, dict(cfg.headers))


def http_client(cfg: Any) -> httpx.AsyncClient:
    """One pooled client per provider. Reads have no httpx timeout: the dispatcher owns
    the time-to-first-byte and stall deadlines."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=cfg.connect_timeout_s, read=None, write=60.0, pool=60.0),
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256),
        follow_redirects=False,
    )
