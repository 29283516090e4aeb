"""Config generations: what a reload changes, and what it must refuse.

A running gateway serves one config *generation* at a time: the config, the
dispatcher built for it (its routing table, prices, providers and streaming
settings) and when it was loaded. A request captures the generation current when it
starts (``runtime.dispatcher.serve``) and finishes on it, its price included, however
many reloads happen meanwhile. A reload builds the next generation beside the running
one: the state the actors hold (credential pools and their cooldowns and windows,
routing's cooling notices, the meter's keys) is reconfigured in place, entry by entry,
and the old generation is retired -- its providers whose connection pools the new one
does not reuse are closed once its last request has ended.

Settings read once at start cannot change this way; ``restart_problems`` names each one
a new config changes, so a reload is refused rather than half applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs

from gateway.config import Config, ConfigError, ProviderConfig, load_config

#: top-level sections and settings that only a restart applies: the files under
#: ``state_dir``, the actors' mailboxes, the embedded simulator's socket, the Responses
#: store's actor; the listening socket and what hypercorn reads once (connection
#: deadlines, the grace period, the WebSocket limits it enforces). The request body
#: limits of ``server`` (``max_body_bytes``, ``max_json_depth``, ``body_timeout_s``)
#: are read per request and change with a reload.
#: The observers are built once too: the tracer and its exporter (``tracing``), the
#: metrics registry and its listener (``metrics.enabled``, ``metrics.port``), the log's
#: level and format (set on the process's loggers). ``metrics.require_token`` and
#: ``logging.log_prompts`` are read per request and change with a reload.
RESTART_SECTIONS = ("state_dir", "state", "actors", "simulator", "store", "tracing")
RESTART_SETTINGS = (("server", "host"), ("server", "port"), ("server", "keep_alive_timeout_s"),
                    ("server", "read_timeout_s"), ("server", "shutdown_grace_s"),
                    ("websocket", "max_message_bytes"), ("websocket", "ping_interval_s"),
                    ("metrics", "enabled"), ("metrics", "port"), ("logging", "level"), ("logging", "format"))

Problem = tuple[str, str]  # (JSON path, message)


class ReloadRefused(Exception):
    """A new config that was not applied; the running one stays. ``problems`` are
    (JSON path, message) pairs."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))
        self.problems = problems


@attrs.frozen
class ConfigSource:
    """Where the running config came from, read again by a reload (``env``: None is the
    process environment, for ``env:NAME`` secrets)."""

    path: Path
    env: Mapping[str, str] | None = attrs.field(default=None, repr=False)

    def load(self) -> Config:
        """The file's config, validated exactly as at start; ``ReloadRefused`` otherwise."""
        try:
            return load_config(self.path, self.env)
        except ConfigError as exc:
            raise ReloadRefused([_split(p) for p in exc.problems]) from None


@attrs.define(eq=False)
class Generation:
    number: int
    config: Config
    loaded_at: float  # wall clock (time.time())
    dispatcher: Any  # gateway.dispatch.Dispatcher
    providers: Mapping[str, Any]
    keys_created: tuple[str, ...] = ()  # config keys this generation created in the meter


def _split(problem: str) -> Problem:
    path, sep, message = problem.partition(": ")
    return (path, message) if sep else ("$", problem)


def restart_problems(old: Config, new: Config, simulator_running: bool) -> list[Problem]:
    """Every setting ``new`` changes that only a restart applies, by its JSON path."""
    problems: list[Problem] = []
    for section in RESTART_SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        if attrs.has(type(before)) and type(after) is type(before):
            for field in attrs.fields(type(before)):
                a, b = getattr(before, field.name), getattr(after, field.name)
                if a != b:
                    problems.append((f"{section}.{field.name}", _changed(a, b)))
        else:
            problems.append((section, _changed(before, after)))
    for section, name in RESTART_SETTINGS:
        a, b = getattr(getattr(old, section), name), getattr(getattr(new, section), name)
        if a != b:
            problems.append((f"{section}.{name}", _changed(a, b)))
    if not simulator_running:
        for name, provider in new.providers.items():
            if provider.embedded:
                problems.append((f"providers.{name}.embedded", "an embedded provider needs the simulator, which "
                                 "starts with the gateway and is not running; this needs a restart"))
    return problems


def _changed(before: Any, after: Any) -> str:
    return f"changed from {before!r} to {after!r}; this setting needs a restart"


def same_pool(before: ProviderConfig, after: ProviderConfig) -> bool:
    """Whether a provider's connection pool serves the new config as it is: everything
    but its credentials (a lease carries those) is unchanged."""
    return attrs.evolve(before, credentials=()) == attrs.evolve(after, credentials=())


def changed_sections(old: Config, new: Config) -> list[str]:
    """The top-level settings that differ, for the reload's answer and its log line."""
    names = []
    for field in attrs.fields(Config):
        if getattr(old, field.name) != getattr(new, field.name):
            names.append("admin" if field.name == "admin_token" else field.name)
    return names
