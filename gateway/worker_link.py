"""A worker's side of ``tollhouse serve --workers N``: its seat and its line to the parent.

The parent starts each worker as ``tollhouse serve ... --worker-seat i/N/fd`` (a flag
kept out of ``--help``: only the parent passes it), ``fd`` being the worker's end of
a Unix socketpair (``gateway.worker_control``). Over it the worker says when it
listens, answers the parent's reload requests and asks the parent to reload its
siblings after ``POST /admin/reload``; when the parent's end closes (the parent is
gone, even killed), the worker stops gracefully.

Per-worker files: worker ``i`` keeps its own files (the state directory's lock, the
transform-trace files) in ``<state_dir>/workers/<i>/``; the
parent holds ``<state_dir>/gateway.lock`` itself, so no other gateway starts on the
same state directory while the workers run.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Awaitable, Callable

import attrs
import trio

from gateway.worker_control import (BadMessage, Message, MessageReader, Ready, Reload, ReloadAll, ReloadAllDone,
                                    Reloaded, Stop, send)

log = logging.getLogger("tollhouse")

#: how long ``POST /admin/reload`` waits for the other workers' answers
RELOAD_ALL_TIMEOUT_S = 60.0


@attrs.frozen
class Seat:
    """Which worker this process is: ``index`` of ``count``, its control socket's fd,
    and which start of that seat (1, then 2 for the process that replaced a dead one...)."""

    index: int
    count: int
    fd: int
    start: int = 1

    @classmethod
    def parse(cls, text: str) -> Seat:
        """``i/N/fd/start`` as the parent writes it."""
        index, count, fd, start = (int(part) for part in text.split("/"))
        if not 0 <= index < count or start < 1:
            raise ValueError(f"worker {index} of {count}, start {start}")
        return cls(index, count, fd, start)

    def text(self) -> str:
        return f"{self.index}/{self.count}/{self.fd}/{self.start}"

    def instance_id(self, configured: str) -> str:
        """This worker's id among the shared backend's instances, from the configured one:
        ``<id>-w<i>``, and ``<id>-w<i>-r<start>`` for a replacement, since a killed
        worker's id stays live (its heartbeat) until the survivors recover its holds."""
        return f"{configured}-w{self.index}" + ("" if self.start == 1 else f"-r{self.start}")


def worker_dir(state_dir: str | Path, index: int) -> Path:
    """Where worker ``index`` keeps the files that belong to one process."""
    return Path(state_dir) / "workers" / str(index)


class WorkerLink:
    """The control socket, seen from the worker (``runtime.fleet``)."""

    def __init__(self, seat: Seat) -> None:
        self.seat = seat
        self._socket = trio.socket.from_stdlib_socket(socket.socket(fileno=seat.fd))
        self._stream = trio.SocketStream(self._socket)
        self._lock = trio.Lock()
        self._tickets = 0
        self._waiting: dict[int, trio.MemorySendChannel] = {}

    async def ready(self, binds: list[str], metrics_url: str | None) -> None:
        await self._send(Ready(binds, metrics_url))

    async def run(self, reload: Callable[[], Awaitable], stop: Callable[[str], Awaitable]) -> None:
        """Answer the parent until its end closes, then begin the graceful stop."""
        reader = MessageReader(self._stream)
        try:
            while True:
                message = await reader.receive()
                if message is None:
                    break
                await self._handle(message, reload, stop)
        except BadMessage as exc:
            log.error("worker %d: the parent sent %s; stopping", self.seat.index, exc)
        await stop("parent gone")

    async def _handle(self, message: Message, reload: Callable[[], Awaitable],
                      stop: Callable[[str], Awaitable]) -> None:
        match message:
            case Stop(name):
                await stop(name)
            case Reload(ticket):
                outcome = await reload()
                await self._send(Reloaded(ticket, self.seat.index, outcome.generation, outcome.problems,
                                          outcome.error))
            case ReloadAllDone(ticket, workers):
                waiter = self._waiting.pop(ticket, None)
                if waiter is not None:
                    waiter.send_nowait(workers)
            case _:
                raise BadMessage(f"a worker's message from the parent: {message!r}")

    async def reload_others(self) -> list[dict] | None:
        """Ask the parent to reload every other worker; their outcomes (``Reloaded.view``)
        by worker index, or None when they did not all answer within the bound."""
        self._tickets += 1
        ticket = self._tickets
        send_channel, receive_channel = trio.open_memory_channel[list](1)
        self._waiting[ticket] = send_channel
        try:
            await self._send(ReloadAll(ticket))
            with trio.move_on_after(RELOAD_ALL_TIMEOUT_S):
                return await receive_channel.receive()
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None  # the parent is gone: this worker is stopping
        finally:
            self._waiting.pop(ticket, None)

    async def _send(self, message: Message) -> None:
        await send(self._stream, self._lock, message)
