"""The config sections of what watches the gateway: metrics, the log, OpenTelemetry
traces and transform traces. Part of the schema ``gateway.config`` reads (the
``Config`` fields ``metrics``, ``logging``, ``tracing``, ``trace``)."""

from __future__ import annotations

from typing import Iterator, Literal
from urllib.parse import urlsplit

import attrs

from gateway.config_schema import FRACTION, PORT, POSITIVE, Check, setting
from gateway.tracing import INSTALL_HINT, missing_modules

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")  # auto: console on a terminal, JSON lines otherwise
Problems = Iterator[tuple[str, str]]


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """``GET /metrics`` (Prometheus): on the main port, or on a port of its own.

    ``require_token``: the admin token as a Bearer token, on whichever port serves it.
    A separate port with ``require_token: false`` is the usual scrape setup, for a port
    that only the monitoring network can reach."""

    enabled: bool = True
    port: int | None = setting(None, check=PORT)  # null: the main port
    require_token: bool = True


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """The log on stdout (``gateway.logs``); ``--log-level`` and ``--log-format`` override.
    ``log_prompts`` adds the client's messages to each access line: for debugging only."""

    level: Literal[LOG_LEVELS] = "info"
    format: Literal[LOG_FORMATS] = "auto"
    log_prompts: bool = False


def _is_otlp_url(value: str) -> bool:
    try:
        url = urlsplit(value)
        url.port
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname) and not url.fragment and "@" not in url.netloc


OTLP_URL = Check(_is_otlp_url, "expected an OTLP/HTTP URL: 'http(s)://host:4318' or its full '.../v1/traces', "
                               "without credentials (a collector's key goes in OTEL_EXPORTER_OTLP_TRACES_HEADERS)")


@attrs.frozen(kw_only=True)
class TracingConfig:
    """OpenTelemetry traces (``gateway.otel``), exported over OTLP/HTTP; needs the
    ``tollhouse[otel]`` extra. Without this section nothing is traced."""

    otlp_endpoint: str = setting(check=OTLP_URL)
    service_name: str = "tollhouse"
    sample_ratio: float = setting(1.0, check=FRACTION)

    @property
    def traces_url(self) -> str:
        """The collector's base URL gets the traces path; a URL with a path is used as written."""
        url = urlsplit(self.otlp_endpoint)
        return self.otlp_endpoint if url.path not in ("", "/") else self.otlp_endpoint.rstrip("/") + "/v1/traces"

    def problems(self, unread: frozenset[str]) -> Problems:
        missing = missing_modules()
        if missing:
            yield "", (f"needs the OpenTelemetry extra, which is not installed ({', '.join(missing)} cannot be "
                       f"imported): {INSTALL_HINT}, or remove the tracing section")


_HEADER_NAME = Check(lambda v: bool(v) and all(c.isalnum() or c in "-_" for c in v),
                     "must be a header name (letters, digits, '-' and '_')")


@attrs.frozen(kw_only=True)
class TraceConfig:
    """Transform traces (``gateway.transform_trace``): every pass of a chosen request,
    written to ``<state_dir>/traces/`` and read at ``GET /admin/traces/{request_id}``."""

    enabled: bool = False
    sample_ratio: float = setting(0.0, check=FRACTION)
    header: str = setting("x-tollhouse-trace", check=_HEADER_NAME)  # with the value 1: traced
    keys: tuple[str, ...] = ()  # gateway key names always traced
    errors_only: bool = False  # a chosen request is written only when it failed
    max_bytes_per_request: int = setting(256 * 1024, check=POSITIVE)
    max_file_bytes: int = setting(64 * 1024 * 1024, check=POSITIVE)  # per day's file; past it, dropped and counted
    search_days: int = setting(7, check=POSITIVE)  # the day files GET /admin/traces/{id} reads
