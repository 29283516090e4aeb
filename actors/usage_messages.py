"""The usage actor's messages: what callers may ask of the meter.

The key-changing messages check their own fields when they are built (a bad value
raises ``InvalidRequest`` in the caller), so the meter's core only ever sees a key
change it can store: a safe name, amounts and limits within the ledger's bounds,
a model allow-list that is a tuple of names. The admin API reads its JSON with the
config's rules first (``gateway/admin_schema.py``) and so names the field at fault;
these checks are what holds for every other caller too.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

import attrs

from actors.key_terms import Budget
from actors.usage_bounds import amount, limit
from actors.usage_keys import DEFAULT_WINDOW_S
from protocols.errors import InvalidRequest
from protocols.unified import EndReason, Provenance, Usage

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_NAME_RULE = "1-64 letters, digits and '-_.', starting with a letter or digit"
MAX_KEY_CHARS = 512  # a chosen key value; generated ones are 35
UNCHANGED = "unchanged"  # an UpdateKey field that leaves the key's setting as it is


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@attrs.frozen
class Authenticate:
    key: str = attrs.field(repr=False)  # a presented gateway key: never in a repr, a log or a crash report
    model: str | None = None


@attrs.frozen
class Reserve:
    """Hold credit for one request. ``targets`` are price labels ``provider/model``;
    ``pricing`` is the price table of the config generation the request started on: its
    settlement charges by it, whatever a reload changed meanwhile (None: the meter's own)."""

    request_id: str
    key: str = attrs.field(repr=False)
    client_model: str
    targets: tuple
    input_tokens: int
    output_tokens: int
    pricing: Mapping[str, Any] | None = attrs.field(default=None, eq=False, repr=False)
    # The caller makes the hold durable before its client sees a byte (``Persist``, or
    # the settlement): a meter may then answer before writing it (the local one does).
    defer_write: bool = False


@attrs.frozen
class Reservation:
    request_id: str
    key_name: str
    hold_micro: int
    deferred: bool = False  # not yet on disk: ``Persist`` (or the settlement) writes it


@attrs.frozen
class Persist:
    """Write a deferred hold now (answered once it is on disk; at once when it already
    is, or when the request was settled meanwhile)."""

    request_id: str


@attrs.frozen
class Settle:
    request_id: str
    usage: Usage | None
    provenance: Provenance
    reason: EndReason
    provider: str | None = None
    model: str | None = None
    credential: str | None = None
    no_work: bool = False  # every upstream refused the call outright: nothing to charge
    basis: str = ""  # how an estimated charge was reached (recorded on the ledger entry)
    unanswered: tuple = ()  # "provider/model@credential" attempts written upstream but never answered


@attrs.frozen
class Settled:
    request_id: str
    charged_micro: int
    overrun_micro: int
    provenance: Provenance
    reason: EndReason
    cost_source: str


def is_key_name(value: Any) -> bool:
    return isinstance(value, str) and KEY_NAME.fullmatch(value) is not None


def _name(_, attribute, value: Any) -> None:
    if not is_key_name(value):
        raise InvalidRequest(f"a key's name must be {KEY_NAME_RULE}", param="name")


def _models(value: Any) -> tuple | None:
    """A model allow-list: None (any model) or model names, kept as a tuple."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(m, str) and m for m in value):
        return tuple(value)
    raise InvalidRequest("models must be an array of model names, or null for any model", param="models")


def _models_or_unchanged(value: Any) -> tuple | None | str:
    return value if isinstance(value, str) and value == UNCHANGED else _models(value)


def _amount(_, attribute, value: Any) -> None:
    if value is not None:
        amount(value)


def _limit(_, attribute, value: Any) -> None:
    limit(value, attribute.name)


def _limit_or_unchanged(_, attribute, value: Any) -> None:
    if not (isinstance(value, str) and value == UNCHANGED):
        limit(value, attribute.name)


def _flag(_, attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{attribute.name} must be true or false", param=attribute.name)


def _flag_or_unchanged(_, attribute, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"{attribute.name} must be true or false", param=attribute.name)


def _key_value(_, attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_CHARS or not value.isprintable():
        raise InvalidRequest(f"a chosen key must be 1-{MAX_KEY_CHARS} printable characters", param="key")


def _expiry(_, attribute, value: Any) -> None:
    if value is None or (isinstance(value, str) and value == UNCHANGED):
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise InvalidRequest("expires_at must be a time (unix seconds) or null", param="expires_at")


def _window(instance: Any, attribute: Any, value: Any) -> None:
    """A key's requests window: seconds, more than 0 and at most a day (or UNCHANGED)."""
    if isinstance(value, str) and value == UNCHANGED:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86_400:
        raise InvalidRequest(f"{attribute.name}: must be more than 0 and at most 86400 (seconds)",
                             param=attribute.name)


def _budget_or_unchanged(value: Any) -> Budget | None | str:
    return value if isinstance(value, str) and value == UNCHANGED else Budget.of(value)


@attrs.frozen
class CreateKey:
    name: str = attrs.field(validator=_name)
    credit_usd: Any = attrs.field(default=None, validator=_amount)
    models: tuple | None = attrs.field(default=None, converter=_models)
    key: str | None = attrs.field(default=None, validator=_key_value, repr=False)
    requests_per_minute: int | None = attrs.field(default=None, validator=_limit)
    requests_window_s: float = attrs.field(default=DEFAULT_WINDOW_S, validator=_window)
    max_concurrency: int | None = attrs.field(default=None, validator=_limit)
    # without credit_usd a key is unlimited only when this says so
    unlimited: bool = attrs.field(default=False, validator=_flag)
    expires_at: int | None = attrs.field(default=None, validator=_expiry)  # unix seconds
    budget: Budget | None = attrs.field(default=None, converter=lambda value: Budget.of(value))


@attrs.frozen
class UpdateKey:
    """A change to a key; ``None`` amounts, ``None`` disabled and ``UNCHANGED`` elsewhere
    leave that setting as it is (``models``/limits set to None mean "no restriction")."""

    name: str  # not checked against KEY_NAME: a key of an older ledger keeps its name
    credit_usd: Any = attrs.field(default=None, validator=_amount)
    add_credit_usd: Any = attrs.field(default=None, validator=_amount)
    disabled: bool | None = attrs.field(default=None, validator=_flag_or_unchanged)
    models: Any = attrs.field(default=UNCHANGED, converter=_models_or_unchanged)
    requests_per_minute: Any = attrs.field(default=UNCHANGED, validator=_limit_or_unchanged)
    requests_window_s: Any = attrs.field(default=UNCHANGED, validator=_window)
    max_concurrency: Any = attrs.field(default=UNCHANGED, validator=_limit_or_unchanged)
    expires_at: Any = attrs.field(default=UNCHANGED, validator=_expiry)
    budget: Any = attrs.field(default=UNCHANGED, converter=_budget_or_unchanged)


@attrs.frozen
class RevokeKey:
    """Revoke a key for good (``DELETE /admin/keys/<name>``): every later request with
    it is refused as unauthenticated; its history stays in the ledger."""

    name: str


@attrs.frozen
class AllowedModels:
    """The model allow-list of a presented key (None: any model), once it authenticates."""

    key: str


@attrs.frozen
class Query:
    """Read-only views for the admin API: ``keys``, ``reservations`` (this process's
    holds), ``all_reservations`` (every instance's, on the shared backend)."""

    what: str


@attrs.frozen
class Reconfigure:
    """A reload: the new price table for requests that start from now on, and the
    config's keys, of which only the ones the meter does not know yet are created
    (the ledger and the admin API own the others)."""

    pricing: Mapping[str, Any] = attrs.field(eq=False, repr=False)
    key_specs: tuple = attrs.field(eq=False, repr=False)


Msg = Authenticate | Reserve | Settle | CreateKey | UpdateKey | RevokeKey | AllowedModels | Query | Reconfigure
