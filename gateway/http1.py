"""Hypercorn's HTTP/1.1 protocol with the gateway's connection rules.

Hypercorn 0.18 has no setting for either rule below, so they live in a subclass of its
``H11Protocol``, installed where its ``ProtocolWrapper`` looks the class up:

- An ``Upgrade: h2c`` request is answered in HTTP/1.1, as if the header were absent
  (RFC 9110 section 7.8 lets a server ignore an upgrade). Hypercorn would answer
  ``101 Switching Protocols`` itself and speak HTTP/2 on the connection, where none of
  the rules of this module apply; the gateway offers HTTP/1.1 only.
  A cleartext HTTP/2 preface (``PRI * HTTP/2.0``) is refused the same way: 505, closed.
- A request head must arrive whole within ``request_head_timeout`` of its first byte,
  or the connection is closed. Hypercorn's own ``read_timeout`` bounds each read of
  the connection, including the reads it keeps waiting on while a long response
  streams to a client that has nothing more to send, so it cannot be used for this;
  the keep-alive idle timer still bounds the wait for the first byte.
"""

from __future__ import annotations

import math

import h11
import hypercorn.protocol
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol


class GatewayH11Protocol(H11Protocol):
    """``H11Protocol`` that ignores h2c upgrades and times out a slow request head."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer = self.context.single_task_class()
        self._head_timer_running = False
        self._refusal: int | None = None

    async def handle(self, event) -> None:
        if isinstance(event, RawData) and event.data and self.stream is None and not self._head_timer_running:
            self._head_timer_running = True  # the first byte of a request head: its clock starts
            await self._head_timer.restart(self.task_group, self._head_deadline)
        elif isinstance(event, Closed):
            await self._stop_head_timer()
        await super().handle(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        if _wants_h2c(event):
            return  # answered in HTTP/1.1, the Upgrade header ignored
        if event.method == b"PRI" and event.target == b"*":
            self._refusal = 505
            return
        await super()._check_protocol(event)

    async def _create_stream(self, request: h11.Request) -> None:
        await self._stop_head_timer()
        if self._refusal is not None:
            await self._send_error_response(self._refusal)
            await self.send(Closed())
            return
        await super()._create_stream(request)

    async def _stop_head_timer(self) -> None:
        if self._head_timer_running:
            self._head_timer_running = False
            await self._head_timer.stop()

    async def _head_deadline(self) -> None:
        await trio.sleep(getattr(self.config, "request_head_timeout", math.inf))
        self._head_timer_running = False
        with trio.CancelScope(shield=True):
            await self.send(Closed())


def _wants_h2c(event: h11.Request) -> bool:
    for name, value in event.headers:
        if name.lower() == b"upgrade" and value.strip().lower() == b"h2c":
            return True
    return False


def install() -> None:
    """Make hypercorn's ``ProtocolWrapper`` build ``GatewayH11Protocol`` for HTTP/1.1.

    Hypercorn looks the class up by name in ``hypercorn.protocol`` for every new
    connection; that lookup is the one seam it offers. Idempotent; refuses to replace
    a class it does not know (a hypercorn upgrade that moved the seam must be noticed).
    """
    current = hypercorn.protocol.H11Protocol
    if current is GatewayH11Protocol:
        return
    if current is not H11Protocol:
        raise RuntimeError(f"hypercorn.protocol.H11Protocol is {current!r}, not hypercorn's own class")
    hypercorn.protocol.H11Protocol = GatewayH11Protocol
