"""The Responses WebSocket connections open now, for the admin API.

Each connection is listed with the name of the key that opened it (never the key), when
it opened, and its turns: the request id of each (its ledger entry), the model, how it
ended. What a turn cost is the ledger's to say: the admin view reads it by request id.
"""

from __future__ import annotations

import itertools
import time
from enum import Enum
from typing import Any

import attrs

#: turns listed per connection (the oldest are dropped; the ledger keeps them all)
MAX_TURNS_LISTED = 100


class TurnEnd(str, Enum):
    RUNNING = "running"
    ANSWERED = "answered"  # the dispatcher served it (its ledger entry says how it ended)
    PREWARM = "prewarm"  # generate: false, answered by the gateway, free
    REFUSED = "refused"  # an error before any answer (400, 402, 404, 429 ...)


@attrs.define
class Turn:
    request_id: str | None
    model: str
    started_at: float
    end: TurnEnd = TurnEnd.RUNNING
    response_id: str | None = None
    error: str | None = None

    def view(self) -> dict:
        return {"request_id": self.request_id, "model": self.model, "started_at": self.started_at,
                "end": self.end.value, "response_id": self.response_id, "error": self.error}


@attrs.define
class SocketInfo:
    id: str
    key_name: str
    opened_at: float
    turns: list = attrs.field(factory=list)
    turn_count: int = 0
    upstream: Any = None  # its upstream sockets (providers.responses_socket.SocketSession)

    def begin(self, request_id: str | None, model: str) -> Turn:
        turn = Turn(request_id, model, time.time())
        self.turn_count += 1
        self.turns.append(turn)
        del self.turns[:-MAX_TURNS_LISTED]
        return turn

    def view(self) -> dict:
        stats = self.upstream.statistics() if self.upstream is not None else None
        return {"id": self.id, "key": self.key_name, "opened_at": self.opened_at, "turns_total": self.turn_count,
                "upstream_sockets": {"open": stats.open, "opened": stats.opened} if stats else None,
                "turns": [turn.view() for turn in self.turns]}


@attrs.define
class Sockets:
    open: dict = attrs.field(factory=dict)  # id -> SocketInfo
    opened_total: int = 0
    _ids: itertools.count = attrs.field(factory=lambda: itertools.count(1))

    def add(self, key_name: str) -> SocketInfo:
        info = SocketInfo(f"ws_{next(self._ids)}", key_name, time.time())
        self.open[info.id] = info
        self.opened_total += 1
        return info

    def remove(self, info: SocketInfo) -> None:
        self.open.pop(info.id, None)
