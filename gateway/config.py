"""The gateway's configuration: JSON in, frozen attrs out, every error with its path.

The classes below are the schema (``gateway/config_schema.py`` reads JSON into them by
their field types, defaults and checks), so a setting is declared in one place.
Loading collects all problems before failing, so an operator fixes a config in one
pass; a config with any error never starts a server. Secrets may be written as
``"env:NAME"`` and are resolved here, once; the resolved values are never printed
(``Secret.__repr__`` hides them).

A config cannot give money away by accident: every target a model or alias can reach
has a price (its own ``pricing["provider/model"]`` or ``pricing["provider/*"]``) or is
marked ``"free": true`` on purpose, and a key without ``credit_usd`` is unlimited only
with ``"unlimited": true``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import urlsplit

import attrs

from gateway.adapter_config import AdapterList
from gateway.field_cache import FieldCacheConfig
from gateway.config_observe import LoggingConfig, MetricsConfig, TraceConfig, TracingConfig
from gateway.config_state import StateConfig
from gateway.config_schema import (FRACTION, INVALID, NON_NEGATIVE, PORT, POSITIVE, Check, Reader, child,
                                   closest, did_you_mean, setting)
from actors.key_terms import PERIODS, UTC_TIME_RULE, is_utc_time, parse_utc
from actors.usage_bounds import MAX_LIMIT
from actors.usage_messages import KEY_NAME_RULE, is_key_name
from protocols import server_tools
from protocols.money import FREE, Price
from protocols.secret import Secret

FAMILIES = ("openai_compat", "openai", "anthropic", "gemini", "simulator")
DISCONNECT_POLICIES = ("cancel", "drain")
PROTOCOLS = ("openai_chat", "openai_responses", "anthropic", "gemini")
FAMILY_PROTOCOL = {"openai_compat": "openai_chat", "openai": "openai_responses", "anthropic": "anthropic",
                   "gemini": "gemini"}
COUNT_TOKENS = ("upstream", "estimate")
SERVER_TOOL_KINDS = server_tools.kind_names()
SERVER_TOOL_POLICIES = server_tools.POLICIES
RATES = ("input", "cached_input", "cache_write", "output", "reasoning")
Problems = Iterator[tuple[str, str]]


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


def _is_proxy_url(value: str) -> bool:
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return False
    return (url.scheme == "http" and bool(url.hostname) and port is not None and url.path in ("", "/")
            and not url.query and not url.fragment)


PROXY_URL = Check(_is_proxy_url, "expected null or 'http://[user:pass@]host:port'")
TARGETS = Check(lambda v: len(v) > 0, "needs at least one target")
KEY_NAME = Check(is_key_name, f"must be {KEY_NAME_RULE}")
KEY_LIMIT = Check(lambda v: 0 < v <= MAX_LIMIT, f"must be between 1 and {MAX_LIMIT:,}")
KEY_WINDOW = Check(lambda v: 0 < v <= 86_400, "must be more than 0 and at most 86400 (seconds)")
UTC_TIME = Check(is_utc_time, UTC_TIME_RULE)


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = setting(8787, check=PORT)
    max_body_bytes: int = setting(10 * 1024 * 1024, check=POSITIVE)
    max_json_depth: int = setting(64, check=POSITIVE)
    shutdown_grace_s: float = setting(30.0, check=NON_NEGATIVE)
    # A keep-alive connection idle this long is closed; above the usual 60 s of load
    # balancers, so that they close first and never send on a connection we are closing.
    keep_alive_timeout_s: float = setting(75.0, check=POSITIVE)
    # After this many requests a connection's answer says ``Connection: close`` (clients
    # reconnect): long-lived connections from a balancer or proxy are spread again
    # across gateway processes, and no connection lives for ever.
    keep_alive_max_requests: int = setting(1000, check=POSITIVE)
    read_timeout_s: float = setting(10.0, check=POSITIVE)  # a request head, from its first byte
    body_timeout_s: float = setting(30.0, check=POSITIVE)  # a whole request body, in total (408 past it)


@attrs.frozen(kw_only=True)
class AdminConfig:
    token: Secret | None = None


@attrs.frozen(kw_only=True)
class CredentialConfig:
    id: str = ""
    key: Secret
    tier: int = 0
    max_concurrency: int = setting(64, check=POSITIVE)
    requests_per_minute: int | None = setting(None, check=POSITIVE)
    tokens_per_minute: int | None = setting(None, check=POSITIVE)


@attrs.frozen(kw_only=True)
class ProviderConfig:
    name: str = setting(from_name=True)
    family: Literal[FAMILIES]
    base_url: str = setting("", convert=lambda url: url.rstrip("/"))
    embedded: bool = False
    credentials: tuple[CredentialConfig, ...] = ()
    connect_timeout_s: float = setting(10.0, check=POSITIVE)
    keepalive_s: float = setting(15.0, check=POSITIVE)
    max_connections: int = setting(100, check=POSITIVE)
    proxy: str | None = setting(None, check=PROXY_URL, repr=False)  # may carry a password
    max_response_bytes: int = setting(32 * 1024 * 1024, check=POSITIVE)  # a whole answer's bound
    headers: Mapping[str, str] = setting(factory=dict)
    protocol: Literal[PROTOCOLS] | None = None
    # a client's Responses WebSocket session reaches this upstream over one socket of its own
    websocket: bool = False
    # request/answer edits for this upstream (providers/adapters), and per upstream model
    adapters: AdapterList = AdapterList()
    model_adapters: Mapping[str, AdapterList] = setting(factory=dict)
    # token counts: asked of the upstream's counting endpoint where its family has one, or estimated
    count_tokens: Literal[COUNT_TOKENS] = "upstream"
    # per server-tool kind this upstream cannot run: "drop" it, or "refuse" the request (default)
    server_tools: Mapping[str, Literal[SERVER_TOOL_POLICIES]] = setting(factory=dict)

    def problems(self, unread: frozenset[str]) -> Problems:
        for kind in () if "server_tools" in unread else self.server_tools:
            if kind not in SERVER_TOOL_KINDS:
                yield f"server_tools.{kind}", f"unknown server tool kind{did_you_mean(kind, SERVER_TOOL_KINDS)}"
        if self.websocket and not self.speaks_responses() and not {"family", "protocol", "embedded"} & unread:
            yield "websocket", ("needs a provider that speaks the Responses API (family \"openai\", or a "
                                "simulated one with protocol \"openai_responses\")")
        if not self.embedded and not self.base_url and "base_url" not in unread:
            yield "base_url", "is required unless the provider is embedded"
        if not self.embedded and not self.credentials and "credentials" not in unread:
            yield "credentials", "needs at least one credential"
        if not {"family", "protocol", "embedded"} & unread:
            yield from self._adapter_problems()
        seen: set[str] = set()
        for i, cred in enumerate(() if "credentials" in unread else self.credentials):
            if cred is INVALID:
                continue
            cid = cred.id or f"{self.name}-{i}"
            if cid in seen:
                yield f"credentials[{i}].id", f"duplicate credential id {cid!r}"
            seen.add(cid)

    def wire_protocol(self) -> str:
        """The protocol this upstream is spoken to in (what its adapters edit)."""
        if self.family == "simulator" or self.embedded:
            return self.protocol or "openai_chat"
        return FAMILY_PROTOCOL[self.family]

    def _adapter_problems(self) -> Problems:
        protocol = self.wire_protocol()
        lists = [("adapters", self.adapters)]
        lists += [(child("model_adapters", model), chosen) for model, chosen in self.model_adapters.items()]
        for path, chosen in lists:
            for i, adapter in enumerate(() if chosen is INVALID else chosen):
                if adapter is not INVALID and adapter.PROTOCOLS is not None and protocol not in adapter.PROTOCOLS:
                    yield f"{path}[{i}]", (f"adapter {adapter.NAME!r} applies to {', '.join(sorted(adapter.PROTOCOLS))}"
                                           f" upstreams; this provider speaks {protocol}")

    def speaks_responses(self) -> bool:
        """Whether the provider is reached with the Responses API (the class the
        registry picks is the Responses one)."""
        if self.family == "simulator" or self.embedded:
            return self.protocol == "openai_responses"
        return self.family == "openai"


@attrs.frozen(kw_only=True)
class ModelConfig:
    name: str = setting(from_name=True)
    targets: tuple[str, ...] = setting(check=TARGETS)
    hold_output_tokens: int | None = setting(None, check=POSITIVE)


@attrs.frozen(kw_only=True)
class BudgetConfig:
    """A key's periodic budget: at most ``limit_usd`` charged per UTC ``period``."""

    period: Literal[PERIODS]
    limit_usd: Decimal


@attrs.frozen(kw_only=True)
class KeyConfig:
    name: str = setting("", check=KEY_NAME)
    key: Secret
    credit_usd: Decimal | None = None
    unlimited: bool = False
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = setting(None, check=KEY_LIMIT)
    requests_window_s: float = setting(60.0, check=KEY_WINDOW)  # the window requests_per_minute counts in
    max_concurrency: int | None = setting(None, check=KEY_LIMIT)
    # unix seconds, written as ISO 8601 UTC; applied when the key is created (then the ledger owns it)
    expires_at: int | None = setting(None, read_as=str | None, check=UTC_TIME, convert=parse_utc)
    budget: BudgetConfig | None = None

    def problems(self, unread: frozenset[str]) -> Problems:
        if "credit_usd" in unread or "unlimited" in unread:
            return
        if self.credit_usd is None and not self.unlimited:
            yield "", "has no credit_usd; set credit_usd, or \"unlimited\": true for a key without a spending limit"
        if self.credit_usd is not None and self.unlimited:
            yield "", "sets both credit_usd and \"unlimited\": true; keep one"


@attrs.frozen(kw_only=True)
class PriceEntry:
    """One pricing table entry as written: USD per million tokens, or ``free`` on purpose."""

    input: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None
    reasoning: Decimal | None = None
    free: bool = False

    def problems(self, unread: frozenset[str]) -> Problems:
        given = [rate for rate in RATES if getattr(self, rate) is not None or rate in unread]
        if self.free:
            if given:
                yield "", f"is free: true and also sets {', '.join(given)}; remove the prices or free"
        elif not given and "free" not in unread:
            yield "", "has no prices; set input/output or free: true"
        else:
            for rate in ("input", "output"):
                if rate not in given:
                    yield "", f"has no {rate} price; set {rate} (\"0\" if it costs nothing) or free: true"

    def price(self) -> Price:
        """A free entry is a price of zero at every rate: the meter needs no special case."""
        if self.free:
            return FREE
        return Price(input=self.input or Decimal(0), cached_input=self.cached_input, cache_write=self.cache_write,
                     output=self.output or Decimal(0), reasoning=self.reasoning)


def _prices(entries: Mapping[str, Any]) -> dict[str, Any]:
    return {label: entry if entry is INVALID else entry.price() for label, entry in entries.items()}


@attrs.frozen(kw_only=True)
class StreamingConfig:
    ttfb_timeout_s: float = setting(30.0, check=POSITIVE)
    stall_timeout_s: float = setting(60.0, check=POSITIVE)
    nonstream_timeout_s: float = setting(600.0, check=POSITIVE)
    on_disconnect: Literal[DISCONNECT_POLICIES] = "cancel"
    drain_timeout_s: float = setting(30.0, check=POSITIVE)
    max_concurrent_drains: int = setting(32, check=NON_NEGATIVE)
    settle_timeout_s: float = setting(10.0, check=POSITIVE)
    max_held_bytes: int = setting(1024 * 1024, check=POSITIVE)  # a stream's bytes after its finish
    client_write_timeout_s: float = setting(30.0, check=POSITIVE)  # a client that stops reading


@attrs.frozen(kw_only=True)
class WebSocketConfig:
    """The Responses WebSocket mode (``GET /v1/responses``)."""

    enabled: bool = True
    idle_timeout_s: float = setting(600.0, check=POSITIVE)  # no message between turns this long: closed
    max_lifetime_s: float = setting(3600.0, check=POSITIVE)  # the API's 60-minute connection limit
    max_message_bytes: int = setting(16 * 1024 * 1024, check=POSITIVE)  # a client message (a turn's body)
    ping_interval_s: float | None = setting(30.0, check=Check(lambda v: v is None or v > 0, "must be null or > 0"))
    # a browser's handshake (it sends ``Origin``) is refused unless its origin is listed;
    # clients that send none (CLIs, SDKs) are not affected
    allowed_origins: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RoutingConfig:
    budget_s: float = setting(10.0, check=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class CooldownConfig:
    base_s: float = setting(1.0, check=POSITIVE)
    max_s: float = setting(300.0, check=POSITIVE)
    jitter: float = setting(0.2, check=FRACTION)
    max_retry_after_s: float = setting(3600.0, check=POSITIVE)


@attrs.frozen(kw_only=True)
class ActorsConfig:
    mailbox_size: int = setting(1024, check=POSITIVE)
    ask_timeout_s: float = setting(10.0, check=POSITIVE)


@attrs.frozen(kw_only=True)
class StoreConfig:
    """The Responses store (``previous_response_id``, ``GET``/``DELETE /v1/responses/{id}``).

    Its limits hold on disk (``max_bytes``, oldest evicted first; ``max_age_s``, the API's
    30-day retention) and in memory (``cache_bytes`` of whole records; an index entry per
    response besides)."""

    enabled: bool = True
    max_bytes: int = setting(512 * 1024 * 1024, check=POSITIVE)
    max_age_s: float = setting(30 * 24 * 3600.0, check=POSITIVE)
    sweep_interval_s: float = setting(300.0, check=POSITIVE)
    cache_bytes: int = setting(32 * 1024 * 1024, check=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = setting(0, check=PORT)
    tokens_per_second: float = setting(0.0, check=NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    admin_token: Secret | None = setting(None, key="admin", read_as=AdminConfig, convert=lambda admin: admin.token)
    state_dir: str = ".tollhouse"
    state: StateConfig = StateConfig()
    providers: Mapping[str, ProviderConfig] = setting(factory=dict)
    models: Mapping[str, ModelConfig] = setting(factory=dict)
    aliases: Mapping[str, str] = setting(factory=dict)
    pricing: Mapping[str, Price] = setting(factory=dict, read_as=Mapping[str, PriceEntry], convert=_prices)
    keys: tuple[KeyConfig, ...] = ()
    streaming: StreamingConfig = StreamingConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    cooldown: CooldownConfig = CooldownConfig()
    routing: RoutingConfig = RoutingConfig()
    actors: ActorsConfig = ActorsConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    store: StoreConfig = StoreConfig()
    field_cache: FieldCacheConfig = FieldCacheConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig | None = None
    trace: TraceConfig = TraceConfig()
    default_hold_output_tokens: int = setting(4096, check=POSITIVE)

    def price_for(self, label: str) -> Price | None:
        """The price the meter charges ``provider/model`` at (its own entry, else ``provider/*``)."""
        provider = label.partition("/")[0]
        return self.pricing.get(label) or self.pricing.get(f"{provider}/*")

    def is_priced(self, label: str) -> bool:
        """Whether a request for this target may be served: it has a price, or is free on purpose."""
        return self.price_for(label) is not None

    def problems(self, unread: frozenset[str]) -> Problems:
        yield from _target_problems(self)
        yield from _pricing_problems(self)
        yield from _key_problems(self)
        if self.metrics.port and self.metrics.port == self.server.port and not {"metrics", "server"} & unread:
            yield "metrics.port", "is the server's own port; leave it null to serve /metrics there"


def _direct(target: str, providers: Mapping[str, Any]) -> bool:
    provider, sep, model = target.partition("/")
    return bool(sep and model and provider in providers)


def _unpriced(config: Config, label: str) -> str:
    provider = label.partition("/")[0]
    near = closest(label, [k for k in config.pricing if not k.endswith("/*")])
    hint = f"; did you mean pricing key {near!r} (a typo in its model name?)" if near is not None else ""
    return (f"{label!r} has no price; add pricing[{json.dumps(label)}] or pricing[{json.dumps(provider + '/*')}], "
            f"or mark it free on purpose with \"free\": true{hint}")


def _target_problems(config: Config) -> Problems:
    for name, model in config.models.items():
        if model is INVALID:
            continue
        for i, target in enumerate(model.targets):
            path = f"{child(child('models', name), 'targets')}[{i}]"
            if target is INVALID:
                continue
            if not _direct(target, config.providers):
                provider = target.partition("/")[0]
                yield path, (f"{target!r} is not 'provider/model' with a configured provider"
                             + did_you_mean(provider, config.providers))
            elif not config.is_priced(target):
                yield path, _unpriced(config, target)
    for alias, target in config.aliases.items():
        path = child("aliases", alias)
        if target is INVALID:
            continue
        if target in config.models:
            continue
        if not _direct(target, config.providers):
            yield path, f"points at unknown model {target!r}" + did_you_mean(target, config.models)
        elif not config.is_priced(target):
            yield path, _unpriced(config, target)


def _pricing_problems(config: Config) -> Problems:
    for label in config.pricing:
        provider, sep, model = label.partition("/")
        path = child("pricing", label)
        if not sep or not model:
            yield path, "expected a 'provider/model' or 'provider/*' key"
        elif provider not in config.providers:
            yield path, f"provider {provider!r} is not configured" + did_you_mean(provider, config.providers)


def _key_problems(config: Config) -> Problems:
    names: dict[str, int] = {}
    secrets: dict[str, int] = {}
    for i, key in enumerate(config.keys):
        if key is INVALID:
            continue
        name = key.name or f"key-{i}"
        if name in names:
            yield f"keys[{i}].name", f"duplicate key name {name!r} (also keys[{names[name]}])"
        names.setdefault(name, i)
        if key.key.value in secrets:
            yield f"keys[{i}].key", f"the same key as keys[{secrets[key.key.value]}]"
        secrets.setdefault(key.key.value, i)


def _finished(config: Config) -> Config:
    """Fill the defaults that depend on where a thing sits: credential ids, key names, the simulator's key."""
    providers = {}
    for name, p in config.providers.items():
        creds = tuple(attrs.evolve(c, id=c.id or f"{name}-{i}") for i, c in enumerate(p.credentials))
        if not creds:
            creds = (CredentialConfig(id=f"{name}-embedded", key=Secret("sim-key")),)
        providers[name] = attrs.evolve(p, credentials=creds)
    keys = tuple(attrs.evolve(k, name=k.name or f"key-{i}") for i, k in enumerate(config.keys))
    return attrs.evolve(config, providers=providers, keys=keys)


def parse_config(doc: Any, env: Mapping[str, str] | None = None) -> Config:
    reader = Reader(os.environ if env is None else env)
    config = reader.read_object(Config, doc, "")
    if reader.problems or config is INVALID:
        raise ConfigError(reader.problems)
    return _finished(config)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError([f"{path}: not valid JSON ({exc})"]) from None
    return parse_config(doc, env)
