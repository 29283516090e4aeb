"""The gateway's configuration: JSON in, frozen attrs out, every error with its path.

Loading collects all problems before failing, so an operator fixes a config in one
pass; a config with any error never starts a server. Secrets may be written as
``"env:NAME"`` and are resolved here, once; the resolved values are never printed
(``Secret.__repr__`` hides them).
"""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from protocols.money import Price
from protocols.secret import Secret

FAMILIES = ("openai_compat", "openai", "anthropic", "gemini", "simulator")
DISCONNECT_POLICIES = ("cancel", "drain")
PROTOCOLS = ("openai_chat", "openai_responses", "anthropic", "gemini")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_bytes: int = 10 * 1024 * 1024


@attrs.frozen
class CredentialConfig:
    id: str
    key: Secret
    tier: int = 0
    max_concurrency: int = 64
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@attrs.frozen
class ProviderConfig:
    name: str
    family: str
    base_url: str = ""
    embedded: bool = False
    credentials: tuple = ()
    connect_timeout_s: float = 10.0
    headers: Mapping[str, str] = attrs.field(factory=dict)
    protocol: str | None = None


@attrs.frozen
class ModelConfig:
    name: str
    targets: tuple
    hold_output_tokens: int | None = None


@attrs.frozen
class KeyConfig:
    name: str
    key: Secret
    credit_usd: Decimal | None = None
    models: tuple | None = None
    requests_per_minute: int | None = None
    max_concurrency: int | None = None


@attrs.frozen
class StreamingConfig:
    ttfb_timeout_s: float = 30.0
    stall_timeout_s: float = 60.0
    nonstream_timeout_s: float = 600.0
    on_disconnect: str = "cancel"
    drain_timeout_s: float = 30.0
    max_concurrent_drains: int = 32


@attrs.frozen
class RoutingConfig:
    budget_s: float = 10.0


@attrs.frozen
class CooldownConfig:
    base_s: float = 1.0
    max_s: float = 300.0
    jitter: float = 0.2
    max_retry_after_s: float = 3600.0


@attrs.frozen
class ActorsConfig:
    mailbox_size: int = 1024
    ask_timeout_s: float = 10.0


@attrs.frozen
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    tokens_per_second: float = 0.0


@attrs.frozen
class Config:
    server: ServerConfig
    admin_token: Secret | None
    state_dir: str
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig]
    aliases: Mapping[str, str]
    pricing: Mapping[str, Price]
    keys: tuple
    streaming: StreamingConfig
    cooldown: CooldownConfig
    routing: RoutingConfig
    actors: ActorsConfig
    simulator: SimulatorConfig
    default_hold_output_tokens: int = 4096


class _Reader:
    """Walks the JSON, recording problems with their paths instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def obj(self, doc: Any, path: str) -> dict:
        if doc is None:
            return {}
        if not isinstance(doc, dict):
            self.fail(path, "expected an object")
            return {}
        return doc

    def get(self, doc: dict, key: str, path: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
        if key not in doc:
            if required:
                self.fail(f"{path}.{key}", "is required")
            return default
        value = doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            self.fail(f"{path}.{key}", f"expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
            return default
        return value

    def positive(self, doc: dict, key: str, path: str, kind: type | tuple, default: Any) -> Any:
        value = self.get(doc, key, path, kind, default)
        if value is not None and value <= 0:
            self.fail(f"{path}.{key}", "must be positive")
            return default
        return value

    def secret(self, doc: dict, key: str, path: str, required: bool = True) -> Secret | None:
        raw = self.get(doc, key, path, str, required=required)
        if raw is None:
            return None
        if raw.startswith("env:"):
            name = raw[4:]
            if name not in self.env:
                self.fail(f"{path}.{key}", f"environment variable {name} is not set")
                return None
            return Secret(self.env[name])
        return Secret(raw)

    def money(self, doc: dict, key: str, path: str) -> Decimal | None:
        raw = doc.get(key)
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            self.fail(f"{path}.{key}", "expected a decimal string")
            return None
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            self.fail(f"{path}.{key}", f"not a decimal number: {raw!r}")
            return None
        if value < 0 or not value.is_finite():
            self.fail(f"{path}.{key}", "must be a finite number >= 0")
            return None
        return value


def _section(reader: _Reader, doc: dict, key: str, cls: type, fields: dict[str, tuple]) -> Any:
    sub = reader.obj(doc.get(key), key)
    unknown = set(sub) - set(fields)
    for name in sorted(unknown):
        reader.fail(f"{key}.{name}", "unknown setting")
    kwargs = {}
    for name, (kind, check) in fields.items():
        default = attrs.fields_dict(cls)[name].default
        value = reader.get(sub, name, key, kind, default)
        if check is not None and value is not None and not check(value):
            reader.fail(f"{key}.{name}", f"invalid value {value!r}")
            value = default
        kwargs[name] = value
    return cls(**kwargs)


_POS: Callable[[Any], bool] = lambda v: v > 0  # noqa: E731
_NONNEG: Callable[[Any], bool] = lambda v: v >= 0  # noqa: E731
_NUM = (int, float)


def parse_config(doc: Any, env: Mapping[str, str] | None = None) -> Config:
    reader = _Reader(os.environ if env is None else env)
    root = reader.obj(doc, "$")
    known = {"server", "admin", "state_dir", "providers", "models", "aliases", "pricing", "keys",
             "streaming", "cooldown", "routing", "actors", "simulator", "default_hold_output_tokens"}
    for name in sorted(set(root) - known):
        reader.fail(name, "unknown setting")
    server = _section(reader, root, "server", ServerConfig, {
        "host": (str, None), "port": (int, lambda v: 0 <= v < 65536), "max_body_bytes": (int, _POS)})
    streaming = _section(reader, root, "streaming", StreamingConfig, {
        "ttfb_timeout_s": (_NUM, _POS), "stall_timeout_s": (_NUM, _POS), "nonstream_timeout_s": (_NUM, _POS),
        "on_disconnect": (str, lambda v: v in DISCONNECT_POLICIES),
        "drain_timeout_s": (_NUM, _POS), "max_concurrent_drains": (int, _NONNEG)})
    cooldown = _section(reader, root, "cooldown", CooldownConfig, {
        "base_s": (_NUM, _POS), "max_s": (_NUM, _POS), "jitter": (_NUM, lambda v: 0 <= v <= 1)})
    routing = _section(reader, root, "routing", RoutingConfig, {"budget_s": (_NUM, _NONNEG)})
    actors = _section(reader, root, "actors", ActorsConfig, {
        "mailbox_size": (int, _POS), "ask_timeout_s": (_NUM, _POS)})
    simulator = _section(reader, root, "simulator", SimulatorConfig, {
        "host": (str, None), "port": (int, lambda v: 0 <= v < 65536), "tokens_per_second": (_NUM, _NONNEG)})
    admin = reader.obj(root.get("admin"), "admin")
    admin_token = reader.secret(admin, "token", "admin", required=False)
    providers = _providers(reader, reader.obj(root.get("providers"), "providers"))
    models = _models(reader, reader.obj(root.get("models"), "models"), providers)
    aliases = {}
    for alias, target in reader.obj(root.get("aliases"), "aliases").items():
        if not isinstance(target, str) or (target not in models and _direct(target, providers) is None):
            reader.fail(f"aliases.{alias}", f"points at unknown model {target!r}")
        else:
            aliases[alias] = target
    pricing = {}
    for target, price in reader.obj(root.get("pricing"), "pricing").items():
        p = reader.obj(price, f"pricing.{target}")
        for name in sorted(set(p) - {"input", "cached_input", "cache_write", "output", "reasoning"}):
            reader.fail(f"pricing.{target}.{name}", "unknown price")
        pricing[target] = Price(
            input=reader.money(p, "input", f"pricing.{target}") or Decimal(0),
            cached_input=reader.money(p, "cached_input", f"pricing.{target}"),
            cache_write=reader.money(p, "cache_write", f"pricing.{target}"),
            output=reader.money(p, "output", f"pricing.{target}") or Decimal(0),
            reasoning=reader.money(p, "reasoning", f"pricing.{target}"),
        )
    keys = _keys(reader, root.get("keys"))
    hold = reader.positive(root, "default_hold_output_tokens", "$", int, 4096)
    state_dir = reader.get(root, "state_dir", "$", str, ".tollhouse")
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(server=server, admin_token=admin_token, state_dir=state_dir, providers=providers,
                  models=models, aliases=aliases, pricing=pricing, keys=keys, streaming=streaming,
                  cooldown=cooldown, routing=routing, actors=actors, simulator=simulator, default_hold_output_tokens=hold)


def _providers(reader: _Reader, doc: dict) -> dict:
    out = {}
    for name, raw in doc.items():
        path = f"providers.{name}"
        p = reader.obj(raw, path)
        family = reader.get(p, "family", path, str, required=True)
        if family is not None and family not in FAMILIES:
            reader.fail(f"{path}.family", f"unknown family {family!r} (one of {', '.join(FAMILIES)})")
        embedded = reader.get(p, "embedded", path, bool, False)
        base_url = reader.get(p, "base_url", path, str, "")
        if not embedded and not base_url:
            reader.fail(f"{path}.base_url", "is required unless the provider is embedded")
        creds = []
        raw_creds = reader.get(p, "credentials", path, list, [])
        seen = set()
        for i, c in enumerate(raw_creds):
            cpath = f"{path}.credentials[{i}]"
            c = reader.obj(c, cpath)
            cid = reader.get(c, "id", cpath, str, f"{name}-{i}")
            if cid in seen:
                reader.fail(f"{cpath}.id", f"duplicate credential id {cid!r}")
            seen.add(cid)
            key = reader.secret(c, "key", cpath)
            creds.append(CredentialConfig(
                id=cid, key=key or Secret(""), tier=reader.get(c, "tier", cpath, int, 0),
                max_concurrency=reader.positive(c, "max_concurrency", cpath, int, 64),
                requests_per_minute=reader.positive(c, "requests_per_minute", cpath, int, None),
                tokens_per_minute=reader.positive(c, "tokens_per_minute", cpath, int, None)))
        if not creds and not embedded:
            reader.fail(f"{path}.credentials", "needs at least one credential")
        if not creds:
            creds.append(CredentialConfig(id=f"{name}-embedded", key=Secret("sim-key")))
        headers = reader.get(p, "headers", path, dict, {})
        protocol = reader.get(p, "protocol", path, str, None)
        if protocol is not None and protocol not in PROTOCOLS:
            reader.fail(f"{path}.protocol", f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
        out[name] = ProviderConfig(name=name, family=family or "", base_url=base_url.rstrip("/"),
                                   embedded=embedded, credentials=tuple(creds), headers=headers, protocol=protocol,
                                   connect_timeout_s=reader.positive(p, "connect_timeout_s", path, _NUM, 10.0))
    return out


def _direct(target: str, providers: Mapping[str, ProviderConfig]) -> tuple[str, str] | None:
    provider, sep, model = target.partition("/")
    if sep and model and provider in providers:
        return provider, model
    return None


def _models(reader: _Reader, doc: dict, providers: dict) -> dict:
    out = {}
    for name, raw in doc.items():
        path = f"models.{name}"
        m = reader.obj(raw, path)
        targets = reader.get(m, "targets", path, list, [], required=True)
        if not targets:
            reader.fail(f"{path}.targets", "needs at least one target")
        for i, t in enumerate(targets):
            if not isinstance(t, str) or _direct(t, providers) is None:
                reader.fail(f"{path}.targets[{i}]", f"{t!r} is not 'provider/model' with a configured provider")
        out[name] = ModelConfig(name=name, targets=tuple(t for t in targets if isinstance(t, str)),
                                hold_output_tokens=reader.positive(m, "hold_output_tokens", path, int, None))
    return out


def _keys(reader: _Reader, raw: Any) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        reader.fail("keys", "expected an array")
        return ()
    keys = []
    for i, k in enumerate(raw):
        path = f"keys[{i}]"
        k = reader.obj(k, path)
        models = reader.get(k, "models", path, list, None)
        keys.append(KeyConfig(name=reader.get(k, "name", path, str, f"key-{i}"),
                              key=reader.secret(k, "key", path) or Secret(""),
                              credit_usd=reader.money(k, "credit_usd", path),
                              models=tuple(models) if models is not None else None,
                              requests_per_minute=reader.positive(k, "requests_per_minute", path, int, None),
                              max_concurrency=reader.positive(k, "max_concurrency", path, int, None)))
    return tuple(keys)


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
