"""What a ``tollhouse serve --workers N`` parent and its workers tell each other.

Each worker has one Unix stream socket to its parent (one end of a socketpair, passed
as an inherited file descriptor). Messages are JSON objects, one a line, named by
``op``; both sides read them with ``MessageReader`` and write them with ``send``.

worker -> parent: ``Ready`` (listening: its addresses and metrics URL), ``ReloadAll``
(``POST /admin/reload`` reloaded this worker: please reload the others), ``Reloaded``
(how a reload the parent asked for went).
parent -> worker: ``Stop`` (the parent got a stop signal: stop gracefully),
``Reload`` (read the config file again), ``ReloadAllDone`` (the answer to a
``ReloadAll``: what every other worker said).

The first stop is a message, not a signal: a process manager that signals every
process of the service itself (systemd's default ``KillMode=control-group``), or a
Ctrl-C that reaches the whole process group, must not make the parent's forwarded
signal a worker's second one, which would stop it at once. A second stop signal to the
parent is forwarded as that signal (the workers are stopping: they stop at once). The
end of the socket (the parent is gone, even killed) is itself a message: the worker
begins a graceful stop.
"""

from __future__ import annotations

import json
from typing import Union

import attrs
import trio

#: a line longer than this is a broken peer, not a message
MAX_LINE = 1 << 20


@attrs.frozen
class Ready:
    binds: list[str]
    metrics_url: str | None = None


@attrs.frozen
class ReloadAll:
    ticket: int


@attrs.frozen
class Stop:
    signal: str  # the signal the parent got, named in the worker's stop line


@attrs.frozen
class Reload:
    ticket: int


@attrs.frozen
class Reloaded:
    """One worker's reload: its new ``generation``, or ``problems`` (refused: the config
    file's problems by JSON path) or ``error`` (it failed); the running generation stays."""

    ticket: int
    worker: int
    generation: int | None = None
    problems: list[dict] = attrs.field(factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.generation is not None and not self.problems and self.error is None

    def view(self) -> dict:
        """The outcome as an admin answer lists it."""
        if self.ok:
            return {"worker": self.worker, "generation": self.generation}
        out: dict = {"worker": self.worker, "reloaded": False, "generation": self.generation}
        if self.problems:
            out["problems"] = self.problems
        if self.error:
            out["error"] = self.error
        return out


@attrs.frozen
class ReloadAllDone:
    ticket: int
    workers: list[dict]  # ``Reloaded.view()`` of every other worker, by worker index


Message = Union[Ready, ReloadAll, Stop, Reload, Reloaded, ReloadAllDone]

OPS: dict[str, type] = {"ready": Ready, "reload_all": ReloadAll, "stop": Stop, "reload": Reload,
                        "reloaded": Reloaded, "reload_all_done": ReloadAllDone}
_NAMES = {cls: name for name, cls in OPS.items()}


class BadMessage(Exception):
    """A line that is not one of the messages above: the peer is broken."""


def encode(message: Message) -> bytes:
    return json.dumps({"op": _NAMES[type(message)], **attrs.asdict(message)}).encode() + b"\n"


def decode(line: bytes) -> Message:
    try:
        doc = json.loads(line)
        cls = OPS[doc.pop("op")]
        return cls(**doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadMessage(f"not a worker message: {line[:200]!r}") from exc


async def send(stream: trio.abc.SendStream, lock: trio.Lock, message: Message) -> None:
    """Write one message whole (``lock``: one writer at a time on this stream)."""
    async with lock:
        await stream.send_all(encode(message))


class MessageReader:
    """The messages the peer sends, one ``receive`` at a time; None once it closed its
    end (or the stream broke)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buffer = b""
        self._lines: list[bytes] = []

    async def receive(self) -> Message | None:
        while not self._lines:
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not chunk:
                return None
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            if len(self._buffer) > MAX_LINE:
                raise BadMessage("a line past the size bound")
            self._lines = [line for line in lines if line.strip()]
        return decode(self._lines.pop(0))
