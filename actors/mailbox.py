"""How callers reach an actor: ``tell`` (one-way) and ``ask`` (request/reply).

A mailbox is a bounded trio memory channel of envelopes. ``ask`` attaches a one-shot
reply slot and waits for it under a deadline; an actor that answers a caller who gave
up (cancelled, timed out) finds nobody waiting and carries on. A domain error raised by
the actor's core (``OutOfCredit``, ``NotFound`` ...) travels back and is raised in the
caller, so call sites read like ordinary function calls.

A message that crashed its actor while a caller's task ran it inline is posted back as
a ``Crash``; the actor's own receive raises its error (see ``Inbox``), so every actor
loop crashes with the real error, where the supervisor records it.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
import trio

from protocols.errors import GatewayFailure


class Reply:
    """A one-shot answer slot: cheaper than a channel pair per ask."""

    __slots__ = ("_event", "value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: Any = None

    def set(self, value: Any) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        return self.value


@attrs.frozen
class Envelope:
    msg: Any
    reply: Reply | None = None


class Crash:
    """Posted to an actor's own inbox when its handler failed inline in a caller's task,
    so the actor crashes (and is restarted) in its own task, where the supervisor sees it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Crash({type(self.error).__name__}: {self.error})"


class Inbox:
    """The actor's end of its mailbox: a receive channel that raises a posted ``Crash``.

    ``receive`` raises the crash's error instead of returning it, so an actor loop needs
    no case for it (the meter's batching loop included). ``receive_nowait`` meeting a
    crash ends the batch there (``WouldBlock``): the messages received before it are
    handled and answered first, and the next ``receive`` raises.
    """

    def __init__(self, channel: trio.MemoryReceiveChannel, mailbox: "Mailbox") -> None:
        self._channel = channel
        self._mailbox = mailbox
        self._crash: Crash | None = None

    async def receive(self) -> Envelope:
        if self._crash is not None:
            crash, self._crash = self._crash, None
            raise crash.error
        envelope = await self._channel.receive()
        if isinstance(envelope.msg, Crash):
            self._mailbox.pending -= 1
            raise envelope.msg.error
        return envelope

    def receive_nowait(self) -> Envelope:
        if self._crash is not None:
            raise trio.WouldBlock
        envelope = self._channel.receive_nowait()
        if isinstance(envelope.msg, Crash):
            self._mailbox.pending -= 1
            self._crash = envelope.msg
            raise trio.WouldBlock
        return envelope


class Mailbox:
    """The only handle callers hold on an actor.

    Fast path: an actor whose handler is synchronous (routing, credentials, cooldown)
    can be given an ``inline`` runner (and the meter, whose step awaits a disk write,
    an ``inline_async`` one). When its inbox is empty and it holds no message
    in hand (``pending == 0``), a message is handled right away in the caller's task:
    the same order (nothing is waiting ahead of it), the same single-threaded ownership
    of the state (a synchronous handler cannot be interleaved), two scheduler rounds
    fewer per ask. Otherwise the message queues as usual.
    """

    def __init__(self, name: str, capacity: int, ask_timeout: float = 10.0) -> None:
        self.name = name
        self.ask_timeout = ask_timeout
        self.send_channel, channel = trio.open_memory_channel[Envelope](capacity)
        self.receive_channel = Inbox(channel, self)
        self.inline: Callable[[Envelope], bool] | None = None
        self.inline_async: Callable[[Envelope], Awaitable[bool]] | None = None
        self.pending = 0  # queued or in the actor's hands, not yet handled

    def depth(self) -> int:
        return self.send_channel.statistics().current_buffer_used

    def post_crash(self, error: BaseException) -> None:
        """Hand a crash that happened in a caller's task to the actor's own loop."""
        self.pending += 1
        self.send_channel.send_nowait(Envelope(Crash(error)))

    def _try_inline(self, envelope: Envelope) -> bool:
        return self.pending == 0 and self.inline is not None and self.inline(envelope)

    async def _try_inline_async(self, envelope: Envelope) -> bool:
        """The I/O-doing variant (the meter): the caller's task runs the actor's own
        batch step for this one message, durable write included, while later messages
        queue behind it (``pending`` is held) for the actor's loop."""
        if self.pending or self.inline_async is None:
            return False
        self.pending += 1
        try:
            return await self.inline_async(envelope)
        finally:
            self.pending -= 1

    async def tell(self, msg: Any) -> None:
        """Deliver without waiting for an answer (waits only while the inbox is full)."""
        envelope = Envelope(msg)
        if not self._try_inline(envelope):
            self.pending += 1
            await self.send_channel.send(envelope)

    def tell_nowait(self, msg: Any) -> bool:
        """Deliver from synchronous code; False if the inbox is full (the notice is lost)."""
        envelope = Envelope(msg)
        if self._try_inline(envelope):
            return True
        try:
            self.send_channel.send_nowait(envelope)
        except trio.WouldBlock:
            return False
        self.pending += 1
        return True

    async def ask(self, msg: Any, timeout: float | None = None) -> Any:
        reply = Reply()
        envelope = Envelope(msg, reply)
        if self._try_inline(envelope) or await self._try_inline_async(envelope):
            value = reply.value
        else:
            with trio.fail_after(self.ask_timeout if timeout is None else timeout):
                self.pending += 1
                await self.send_channel.send(envelope)
                value = await reply.wait()
        if isinstance(value, BaseException):
            raise value
        return value


def answer(envelope: Envelope, value: Any) -> None:
    if envelope.reply is not None:
        envelope.reply.set(value)


def crash_reply(envelope: Envelope, actor: str, exc: BaseException) -> None:
    answer(envelope, GatewayFailure(f"internal error in the {actor} actor: {type(exc).__name__}"))
