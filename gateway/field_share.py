"""The field cache of an instance of the shared backend: this process's store in
front, Redis behind (``actors.redis_fields``), so a conversation that moves between
workers or instances still gets its signed fields back.

Every entry this process keeps is also offered to Redis, in the conversation's hash
(its name a digest of the key name and the conversation, so it names neither). Before
a request that may get fields back, the conversation's hash is read into this
process's store; an entry this process wrote and Redis has not yet taken is left as it
is here (it is the newer). The byte cap is each process's; in Redis a conversation's
entries live ``ttl_s`` after its last write. An entry of a form this gateway does not
read (another version's) is skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from actors.redis_fields import FieldRelay
from gateway.field_cache import FieldKind, FieldStore, Mode, Scope

Key = tuple[Scope, FieldKind, Mode, str]


def scope_digest(scope: Scope) -> str:
    return hashlib.sha256(json.dumps([scope.key_name, scope.conversation]).encode()).hexdigest()[:40]


def field_name(key: Key) -> str:
    _, kind, mode, anchor = key
    return json.dumps([kind.value, mode.value, anchor], separators=(",", ":"))


class SharedFieldStore(FieldStore):
    shared = True

    def __init__(self, max_bytes: int, ttl_s: float, relay: FieldRelay) -> None:
        super().__init__(max_bytes, ttl_s)
        self.relay = relay

    def put(self, key: Key, value: Any, now: float) -> None:
        super().put(key, value, now)
        if self.holds(key):  # kept here: not past the byte cap
            self.relay.offer(scope_digest(key[0]), field_name(key), json.dumps(value, separators=(",", ":")),
                             self.ttl_s)

    async def load(self, scope: Scope, now: float) -> None:
        digest = scope_digest(scope)
        for raw_field, raw_value in (await self.relay.load(digest)).items():
            field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
            if self.relay.pending(digest, field):
                continue
            try:
                kind, mode, anchor = json.loads(field)
                key = (scope, FieldKind(kind), Mode(mode), str(anchor))
                value = json.loads(raw_value)
            except (ValueError, TypeError):
                continue
            FieldStore.put(self, key, value, now)  # kept here, not offered back


__all__ = ["SharedFieldStore", "field_name", "scope_digest"]
