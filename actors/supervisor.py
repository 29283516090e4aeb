"""Starts every actor in one nursery and restarts any that crash.

The mailbox outlives the actor instance: callers keep their handle across a restart,
and a restarted actor is rebuilt by its factory (which reloads persisted state).
Crashes are counted and the last one is kept for ``/admin/actors``; the log has an
``actor crashed`` line (with the traceback) and an ``actor restarted`` line for each.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import attrs
import trio

from actors.base import Actor
from actors.mailbox import Mailbox

log = logging.getLogger("tollhouse.actors")

MAX_CRASH_CHARS = 500


def describe_crash(exc: BaseException) -> str:
    """``Type: message`` of what crashed an actor, for ``/admin/actors`` and the log.

    An actor that runs a nursery (the meter) crashes with an exception group around the
    error: each error inside it is named, not the group.
    """
    errors = []
    pending = [exc]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            errors.append(f"{type(error).__name__}: {error}")
    text = "; ".join(errors)
    return text if len(text) <= MAX_CRASH_CHARS else text[:MAX_CRASH_CHARS] + "..."


@attrs.define
class Slot:
    factory: Callable[[], Actor]
    mailbox: Mailbox
    actor: Actor
    restarts: int = 0
    running: bool = False
    last_crash: str | None = None
    handled_before_restart: int = 0

    def counts(self) -> dict:
        """The numbers every actor has, cheap to read (a metrics scrape reads them)."""
        return {
            "mailbox_depth": self.mailbox.depth(),
            "mailbox_capacity": self.mailbox.send_channel.statistics().max_buffer_size,
            "handled": self.handled_before_restart + self.actor.handled,
            "restarts": self.restarts,
        }

    def snapshot(self) -> dict:
        return {**self.counts(), "last_crash": self.last_crash, "state": self.actor.snapshot()}


class Supervisor:
    def __init__(self, restart_backoff: float = 0.05) -> None:
        self.slots: dict[str, Slot] = {}
        self.restart_backoff = restart_backoff

    def add(self, name: str, factory: Callable[[], Actor], capacity: int, ask_timeout: float) -> Mailbox:
        mailbox = Mailbox(name, capacity, ask_timeout)
        slot = self.slots[name] = Slot(factory, mailbox, factory())
        if slot.actor.inline_safe:
            mailbox.inline = partial(self._inline, slot)
        elif slot.actor.inline_async:
            mailbox.inline_async = partial(self._inline_async, slot)
        return mailbox

    async def _inline_async(self, slot: Slot, envelope) -> bool:
        """Run one message's whole step in the caller's task (see ``Mailbox``)."""
        if not slot.running:
            return False
        actor = slot.actor
        try:
            await actor.handle_now(envelope)
        except Exception as exc:
            if slot.actor is actor and slot.running:
                slot.running = False
                slot.mailbox.post_crash(exc)
        return True

    def _inline(self, slot: Slot, envelope) -> bool:
        """Handle a message in the caller's task (see ``Mailbox``); False: queue it."""
        if not slot.running:
            return False
        try:
            slot.actor.dispatch(envelope, trio.current_time())
        except Exception as exc:
            slot.running = False
            slot.mailbox.post_crash(exc)
        return True

    def actor(self, name: str) -> Actor:
        return self.slots[name].actor

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for slot in self.slots.values():
                await slot.actor.start()
            for name, slot in self.slots.items():
                nursery.start_soon(self._keep_alive, name, slot)
            task_status.started()

    async def _keep_alive(self, name: str, slot: Slot) -> None:
        while True:
            try:
                slot.running = True
                await slot.actor.run(slot.mailbox)
                return
            except Exception as exc:
                slot.running = False
                slot.restarts += 1
                slot.last_crash = describe_crash(exc)
                slot.handled_before_restart += slot.actor.handled
                log.error("actor crashed", exc_info=exc, extra={
                    "actor": name, "error": slot.last_crash, "restarts": slot.restarts})
                await trio.sleep(self.restart_backoff)
                slot.actor = slot.factory()
                await slot.actor.start()
                log.info("actor restarted", extra={"actor": name, "restarts": slot.restarts})

    def snapshot(self) -> dict:
        return {name: slot.snapshot() for name, slot in self.slots.items()}
