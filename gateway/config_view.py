"""The running config as JSON for ``GET /admin/config``, with every secret redacted.

Written with the config file's own names (``admin.token``, ``pricing`` entries as
prices per million tokens), so an operator can compare it with the file. Secrets go
structurally -- every ``Secret`` (upstream keys, gateway keys, the admin token), the
values of credential-like provider headers, a proxy URL's password -- and the whole
view then passes through the gateway's redactor, so a secret pasted into some other
field (a ``base_url`` with a key in its query) is not shown either.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from gateway.config import Config
from gateway.redaction import is_secret_header
from protocols.redact import REDACTED, Redactor
from protocols.secret import Secret

def config_view(config: Config, redactor: Redactor) -> dict:
    view = _value(config)
    view.pop("admin_token", None)
    view = {"admin": {"token": None if config.admin_token is None else REDACTED}, **view}
    for provider in view["providers"].values():
        provider.pop("name", None)
        provider["headers"] = {k: REDACTED if is_secret_header(k) else v for k, v in provider["headers"].items()}
        if provider["proxy"]:
            provider["proxy"] = _without_password(provider["proxy"])
    for model in view["models"].values():
        model.pop("name", None)
    return redactor.any(view)


def _value(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if attrs.has(type(value)):
        fields = {f.name: _value(getattr(value, f.name)) for f in attrs.fields(type(value))}
        name = getattr(type(value), "NAME", None)  # an adapter: its name, and no credential it sends
        if isinstance(name, str) and name:
            if isinstance(fields.get("headers"), Mapping):
                fields["headers"] = {k: REDACTED if is_secret_header(k) else v for k, v in fields["headers"].items()}
            return {"name": name, **fields}
        return fields
    if isinstance(value, Mapping):
        return {k: _value(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_value(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _without_password(url: str) -> str:
    """A proxy URL without its secret: the password, or a user name standing alone (a token)."""
    parts = urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.hostname or ""
    user = f"{parts.username or ''}:{REDACTED}" if parts.password is not None else REDACTED
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
