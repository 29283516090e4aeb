"""Provider families by name: configuration picks a class here, never an if/elif chain."""

from __future__ import annotations

from typing import Any

from providers.adapters import ProviderAdapters
from providers.anthropic import AnthropicProvider
from providers.gemini import GeminiProvider
from providers.http11 import Pool
from providers.openai import OpenAIResponsesProvider
from providers.openai_compat import OpenAICompatProvider
from providers.seams import Provider
from protocols.redact import NO_SECRETS, Redactor

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


def build(cfg: Any, simulator_url: str | None, redactor: Redactor = NO_SECRETS) -> Provider:
    """A provider object for one configured provider, with its own connection pool
    (``provider.client``; the caller closes it) and the gateway's redactor (every
    upstream text it lets out loses the secrets the gateway knows)."""
    simulated = cfg.family == "simulator" or cfg.embedded
    if simulated:
        cls = BY_PROTOCOL[cfg.protocol or "openai_chat"]
        base = cfg.base_url or (simulator_url or "") + getattr(cls, "SIM_SUFFIX", "")
    else:
        cls = FAMILIES[cfg.family]
        base = cfg.base_url
    # the simulator is on this host: the environment's proxy is never the way there
    pool = Pool(base, connect_timeout=cfg.connect_timeout_s, keepalive_s=cfg.keepalive_s,
                max_connections=cfg.max_connections, proxy=cfg.proxy, env={} if simulated else None,
                max_body_bytes=cfg.max_response_bytes)
    # only a Responses provider takes the switch (the config refuses it elsewhere)
    switches = {"websocket": True} if cfg.websocket else {}
    adapters = ProviderAdapters(cfg.wire_protocol(), tuple(cfg.adapters), dict(cfg.model_adapters))
    provider = cls(cfg.name, base, pool, dict(cfg.headers), redactor=redactor, adapters=adapters, **switches)
    # server tools this upstream cannot run that the operator drops (the rest are refused)
    provider.server_tools = dict(cfg.server_tools)
    return provider
