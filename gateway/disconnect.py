"""A client's disconnect, told to the request the moment the server sees it.

ASGI tells an application that its client left by answering a ``receive()`` with
``http.disconnect``: to hear it while the answer is being made, something must be
waiting on ``receive`` the whole time, a task per request. The gateway's own HTTP/1.1
protocol (``gateway.http1``) puts a ``Disconnect`` in each request's scope
(``scope["extensions"][EXTENSION]``) and fires it where it closes the request's stream
-- the same moment hypercorn queues ``http.disconnect`` -- so the dispatcher registers
a callback instead of running a watcher task (``Dispatcher._serve``). A server without
it leaves the extension out, and the watcher task does the job.
"""

from __future__ import annotations

from typing import Callable

EXTENSION = "tollhouse.disconnect"


class Disconnect:
    """Callbacks run once when the request's stream closes (the client left, or the
    exchange ended). A callback registered after that runs at once."""

    __slots__ = ("fired", "_callbacks")

    def __init__(self) -> None:
        self.fired = False
        self._callbacks: list[Callable[[], None]] = []

    def watch(self, callback: Callable[[], None]) -> None:
        if self.fired:
            callback()
        else:
            self._callbacks.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def fire(self) -> None:
        """The stream is closing: each callback once, in the order registered."""
        if self.fired:
            return
        self.fired = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
