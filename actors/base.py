"""The shape every actor shares: a synchronous core behind a thin receive loop.

Subclasses implement ``handle(msg, now)`` (pure state transition, returns the reply)
and ``snapshot()``; the loop here reads the inbox, calls the core with the trio clock,
and answers. Actors that need I/O (the usage ledger) override ``run``.
"""

from __future__ import annotations

from typing import Any

import trio

from actors.mailbox import Envelope, Mailbox, answer, crash_reply
from protocols.errors import GatewayError


class Actor:
    name = "actor"

    def __init__(self) -> None:
        self.handled = 0

    def handle(self, msg: Any, now: float) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def snapshot(self) -> dict:
        return {}

    async def start(self) -> None:
        """Load persisted state before the first message (override where needed)."""

    #: the handler is synchronous and O(1): callers may run it inline when idle
    inline_safe = True
    #: ``handle_now(envelope)`` may run one message in a caller's task when idle
    inline_async = False

    async def handle_now(self, envelope: Envelope) -> None:  # pragma: no cover - optional
        raise NotImplementedError

    async def run(self, mailbox: Mailbox) -> None:
        receive = mailbox.receive_channel
        while True:
            envelope: Envelope = await receive.receive()  # raises a posted crash's error
            try:
                self.dispatch(envelope, trio.current_time())
            finally:
                mailbox.pending -= 1

    def dispatch(self, envelope: Envelope, now: float) -> None:
        """Handle one envelope; a bug crashes the actor after telling the caller."""
        try:
            result = self.handle(envelope.msg, now)
        except GatewayError as exc:
            result = exc
        except Exception as exc:
            crash_reply(envelope, self.name, exc)
            raise
        self.handled += 1
        answer(envelope, result)
