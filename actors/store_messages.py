"""The store actor's messages: what callers may tell or ask of the Responses store.

A stored response belongs to the gateway key that created it: every read names its
``owner`` (the key's hash, ``actors.usage_messages.hash_key``), and a response of
another owner is answered exactly like an unknown id (None / False), so callers give
both the same 404 and no key learns which ids exist.

``Put`` is told (``tell``/``tell_nowait``); the rest are asked. A ``Put`` is visible to
every message after it at once and durable shortly after (written in batches);
``Flush`` answers once everything put before it is on disk.
"""

from __future__ import annotations

import attrs


def _items(value) -> tuple:
    return tuple(value)


@attrs.frozen
class StoredResponse:
    """One response as the client saw it, and the input that produced it.

    ``input`` holds the input items of this response only, as the client sent them (a
    string input normalized by the caller to one user message item); ``response`` is
    the whole response object (reasoning items keep their ``encrypted_content``).
    ``input_ids`` names each input item for paging: the item's own ``id``, or one the
    store gave it at ``Put`` (left empty by callers). They are kept apart from the
    items so that a rebuilt conversation (``Chain``) sends upstream exactly what the
    client sent, never an id the upstream has not seen.
    """

    id: str
    owner: str
    previous_id: str | None
    model: str
    provider: str | None
    credential: str | None
    input: tuple[dict, ...] = attrs.field(converter=_items, repr=False)
    response: dict = attrs.field(repr=False)
    created_at: float
    input_ids: tuple[str, ...] = attrs.field(default=(), converter=_items)

    def output(self) -> tuple[dict, ...]:
        """The response's output items (none if the response carries no list)."""
        items = self.response.get("output")
        return tuple(item for item in items if isinstance(item, dict)) if isinstance(items, list) else ()

    def listed_input(self) -> tuple[dict, ...]:
        """The input items with their ids, as ``input_items`` lists them."""
        return tuple({**item, "id": item_id} for item, item_id in zip(self.input, self.input_ids))


@attrs.frozen
class Put:
    """Store (or replace: same id again) one response. Told, never asked."""

    record: StoredResponse


@attrs.frozen
class Get:
    """-> ``StoredResponse | None`` (None: unknown, gone, or another owner's)."""

    id: str
    owner: str


@attrs.frozen
class Delete:
    """-> ``bool``: whether the owner's response existed (and is now gone)."""

    id: str
    owner: str


@attrs.frozen
class InputItems:
    """-> ``tuple[dict, ...] | None``: that response's own input items, each with an ``id``."""

    id: str
    owner: str


@attrs.frozen
class Chain:
    """-> ``tuple[dict, ...] | None``: the conversation the response ended, oldest first.

    For each response from the root of its ``previous_id`` chain to this one: its input
    items, then its output items. None when the response or any ancestor is unknown,
    gone or another owner's: a chain with a hole would silently lose context.
    """

    id: str
    owner: str


@attrs.frozen
class Sweep:
    """Evict expired responses, then the oldest until under the size limit.

    ``now`` is a unix time; None means the actor's clock (its own periodic sweep)."""

    now: float | None = None


@attrs.frozen
class Flush:
    """-> None, once every ``Put`` and ``Delete`` before it is committed to disk."""


@attrs.frozen
class Snapshot:
    """-> the store's counters (``/admin/actors`` shows the same)."""


Msg = Put | Get | Delete | InputItems | Chain | Sweep | Flush | Snapshot
