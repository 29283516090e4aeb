"""The usage actor's messages: what callers may ask of the meter."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from protocols.unified import EndReason, Provenance, Usage


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@attrs.frozen
class Authenticate:
    key: str = attrs.field(repr=False)  # a presented gateway key: never in a repr, a log or a crash report
    model: str | None = None


@attrs.frozen
class Reserve:
    """Hold credit for one request. ``targets`` are price labels ``provider/model``."""

    request_id: str
    key: str = attrs.field(repr=False)
    client_model: str
    targets: tuple
    input_tokens: int
    output_tokens: int


@attrs.frozen
class Reservation:
    request_id: str
    key_name: str
    hold_micro: int


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


@attrs.frozen
class CreateKey:
    name: str
    credit_usd: Any = None
    models: tuple | None = None
    key: str | None = attrs.field(default=None, repr=False)
    requests_per_minute: int | None = None
    max_concurrency: int | None = None
    unlimited: bool = False  # without credit_usd a key is unlimited only when this says so


@attrs.frozen
class UpdateKey:
    name: str
    credit_usd: Any = None
    add_credit_usd: Any = None
    disabled: bool | None = None
    models: Any = "unchanged"
    requests_per_minute: Any = "unchanged"
    max_concurrency: Any = "unchanged"


@attrs.frozen
class Query:
    """Read-only views for the admin API: ``keys``, ``reservations``."""

    what: str


Msg = Authenticate | Reserve | Settle | CreateKey | UpdateKey | Query
