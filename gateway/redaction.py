"""What the gateway redacts, and its logs redacted.

The gateway's ``Redactor`` (``protocols.redact``) is built once from every secret the
config holds; the providers apply it to upstream text on its way to a client. Logs get
the same treatment at one place rather than at each call: ``redacting_logs`` puts a
filter on every ``tollhouse`` logger (and the server's error log) for as long as the
gateway runs, which rewrites each record's message, exception text and stack text
before any handler formats it -- so an exception that quotes an upstream body, or a
traceback of one, cannot print a key.
"""

from __future__ import annotations

import base64
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from protocols.redact import Redactor

#: the loggers the gateway writes to besides its own ``tollhouse.*``
SERVER_LOGGERS = ("hypercorn.error", "quart.app")

# provider headers whose values are credentials (Azure's ``api-key``, a proxy token, ...)
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)


def is_secret_header(name: str) -> bool:
    """Whether a provider header's value is a credential (never shown, always redacted)."""
    return bool(_SECRET_HEADER.search(name))


def secret_values(config: Any) -> set[str]:
    """Every secret value the config holds: provider credentials, gateway keys, the admin
    token, proxy passwords (and the Basic credential made of them), credential-like
    provider headers."""
    values: set[str] = set()
    for provider in config.providers.values():
        values.update(c.key.value for c in provider.credentials)
        values.update(v for k, v in provider.headers.items() if _SECRET_HEADER.search(k) and isinstance(v, str))
        values.update(adapter_header_secrets(provider))
        if provider.proxy:
            url = urlsplit(provider.proxy)
            if url.password:
                password = unquote(url.password)
                pair = f"{unquote(url.username or '')}:{password}"
                values.update((password, pair, base64.b64encode(pair.encode()).decode()))
            elif url.username:  # a token as the user name alone (``http://TOKEN@proxy``)
                token = unquote(url.username)
                values.update((token, base64.b64encode(f"{token}:".encode()).decode()))
    values.update(k.key.value for k in config.keys)
    if config.admin_token is not None:
        values.add(config.admin_token.value)
    values.update(state_secrets(config.state))
    return {v for v in values if v}


def adapter_header_secrets(provider: Any) -> set[str]:
    """Credential-like header values that the provider's adapters (``extra_headers``)
    send, for the provider and for each of its models."""
    lists = [provider.adapters, *provider.model_adapters.values()]
    return {value for adapters in lists for adapter in adapters
            for name, value in (getattr(adapter, "headers", None) or {}).items()
            if _SECRET_HEADER.search(name) and isinstance(value, str)}


def redactor_for(config: Any) -> Redactor:
    return Redactor(secret_values(config))


class RedactingFilter(logging.Filter):
    """Rewrites a record so that no handler can format a secret out of it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor.text
        message = record.getMessage()
        clean = redact(message)
        if clean is not message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _gateway_loggers() -> list[logging.Logger]:
    names = [n for n in logging.root.manager.loggerDict if n == "tollhouse" or n.startswith("tollhouse.")]
    return [logging.getLogger(n) for n in sorted({"tollhouse", *names, *SERVER_LOGGERS})]


@contextmanager
def redacting_logs(redactor: Redactor) -> Iterator[RedactingFilter]:
    """The gateway's loggers filtered through ``redactor`` until the block ends (each
    gateway in a process adds and removes its own filter)."""
    flt = RedactingFilter(redactor)
    loggers = _gateway_loggers()
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield flt
    finally:
        for logger in loggers:
            logger.removeFilter(flt)


def state_secrets(state: Any) -> set[str]:
    """The shared backend's connection strings, and the password each may carry."""
    values: set[str] = set()
    dsn = state.postgres.dsn.value if state.postgres else None
    if dsn:
        values.add(dsn)
        values.update(_pg_passwords(dsn))
    url = state.redis.url.value if state.redis else None
    if url:
        values.add(url)
        password = urlsplit(url).password
        if password:
            values.add(unquote(password))
    return values


def _pg_passwords(dsn: str) -> set[str]:
    """The password of a libpq connection string as libpq reads it (a keyword string's
    quotes and escapes, a URI's user info or its ``?password=``), and as written."""
    from psycopg import ProgrammingError  # the shared backend's driver: loaded only with a Postgres DSN
    from psycopg.conninfo import conninfo_to_dict

    found: set[str] = set()
    written = urlsplit(dsn).password if "://" in dsn else None
    if written:
        found.update((written, unquote(written)))
    try:
        password = conninfo_to_dict(dsn).get("password")
    except ProgrammingError:  # not a connection string libpq reads: it never connects, shown nowhere but here
        password = None
    if isinstance(password, str) and password:
        found.add(password)
    return found
