"""The admin API's request bodies, read by the config's own reader and rules.

A key made through ``POST /admin/keys`` obeys what a key in the config obeys: its
fields are ``KeyConfig``'s (the same types, bounds and "credit_usd or unlimited"
rule), with a name that is required and a key value the gateway generates unless one
is given. ``PATCH /admin/keys/<name>`` takes ``KeyChange``: each field it leaves out
stays as it is. Both are read by ``gateway.config_schema.Reader``, so an unknown field
is refused with a "did you mean", a value of the wrong type is refused rather than
ignored (``"disabled": "true"`` is not a change that silently does nothing), and
every problem of a body is named in one answer.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs

from actors.usage_messages import UNCHANGED, CreateKey, UpdateKey
from gateway.config import KEY_LIMIT, KEY_NAME, KEY_WINDOW, UTC_TIME, BudgetConfig, KeyConfig
from actors.key_terms import parse_utc
from gateway.config_schema import Reader, setting
from protocols.errors import InvalidRequest


@attrs.frozen(kw_only=True)
class NewKey(KeyConfig):
    """``KeyConfig`` with a required name; ``key`` (the secret) is optional and never
    read from the gateway's environment (``env:`` is only a config's spelling)."""

    name: str = setting(check=KEY_NAME)
    key: str | None = None


@attrs.frozen(kw_only=True)
class KeyChange:
    """A PATCH body. ``null`` means "no limit" for ``models``, the two limits,
    ``expires_at`` (no expiry) and ``budget`` (no periodic budget); an amount or
    ``disabled`` has no null (leave it out to keep it)."""

    credit_usd: Decimal = None  # type: ignore[assignment]  # None: left out
    add_credit_usd: Decimal = None  # type: ignore[assignment]
    disabled: bool = None  # type: ignore[assignment]
    models: tuple[str, ...] | None = UNCHANGED  # type: ignore[assignment]
    requests_per_minute: int | None = setting(UNCHANGED, check=KEY_LIMIT)
    requests_window_s: float = setting(UNCHANGED, check=KEY_WINDOW)
    max_concurrency: int | None = setting(UNCHANGED, check=KEY_LIMIT)
    expires_at: int | None = setting(UNCHANGED, read_as=str | None, check=UTC_TIME, convert=parse_utc)
    budget: BudgetConfig | None = UNCHANGED  # type: ignore[assignment]  # null: no budget


def _read(cls: type, doc: Any) -> Any:
    if not isinstance(doc, dict):
        raise InvalidRequest("Expected a JSON object body.")
    reader = Reader(env={})
    value = reader.read_object(cls, doc, "")
    if reader.problems:
        raise InvalidRequest("; ".join(reader.problems))
    return value


def create_key_message(doc: Any) -> CreateKey:
    """The ``CreateKey`` a POST body asks for, or ``InvalidRequest`` naming every problem."""
    return CreateKey(**attrs.asdict(_read(NewKey, doc), recurse=False))


def update_key_message(name: str, doc: Any) -> UpdateKey:
    """The ``UpdateKey`` a PATCH body asks for, or ``InvalidRequest`` naming every problem."""
    return UpdateKey(name, **attrs.asdict(_read(KeyChange, doc), recurse=False))
