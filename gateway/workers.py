"""``tollhouse serve --workers N``: a parent process that starts, watches and stops N
gateway processes serving one port.

Each worker is a whole gateway (``tollhouse serve`` with ``--worker-seat``: its own
interpreter, trio loop and runtime) listening on the same address with
``SO_REUSEPORT``, so the kernel spreads new connections over the workers. The parent
first binds the address itself (without listening: it takes no connection), which
refuses an address in use before any worker starts, turns a port of 0 into the one
port every worker binds, and keeps the port held while a worker restarts. It also
holds ``<state_dir>/gateway.lock``; each worker has its own files under
``<state_dir>/workers/<i>/`` (``gateway.worker_link``).

- Start: the address is printed once, when every worker listens. A worker that
  cannot start stops the others, and the parent exits with that worker's status (its
  own error line is already on stderr).
- SIGTERM / SIGINT: every worker is told to stop, each stopping gracefully as one
  gateway does; the parent exits once all have stopped. A second signal is forwarded
  as a signal (every worker stops at once) and the parent then dies by it.
- SIGHUP: every worker reads the config file again; one line says what each came to.
  ``POST /admin/reload`` on any worker does the same (that worker first, then the
  others through the parent), and its answer lists every worker's outcome.
- A worker that dies unexpectedly is started again after a backoff (0.5 s, doubled
  after each crash in a row up to 30 s; a worker that served a minute starts the count
  again). A worker that dies ``MAX_FAILED_STARTS`` times in a row before listening
  stops everything, with its status.

Workers stay in the parent's process group (a process manager or ``kill -- -PGID``
reaches them all, and their memory counts with it). The parent passes its first stop
signal on as a ``Stop`` message, not a signal, so a worker that the same stop reached
directly (Ctrl-C at a terminal, systemd's ``KillMode=control-group``) stops gracefully
once. A worker whose parent is gone (even killed) sees its control socket close and
stops gracefully.

The local state backend is refused: its meter and SQLite ledger belong to one
process (each worker would spend the same credit). Metrics are one scrape per worker
(worker ``i`` on ``metrics.port + i``), so a scrape never mixes or loses a worker's
counters; ``/metrics`` on the main port would reach one worker at random and is
refused at start.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import sys
from typing import Callable

import attrs
import trio

from gateway.config import Config
from gateway.config_state import shared
from gateway.process import STOP_SIGNALS, RELOAD_SIGNAL, BindRefused, server_config
from gateway.state_lock import StateDirBusy, StateDirLock
from gateway.worker_control import (BadMessage, Message, MessageReader, Ready, Reload, ReloadAll, ReloadAllDone,
                                    Reloaded, Stop, send)
from gateway.worker_link import RELOAD_ALL_TIMEOUT_S, Seat

#: a worker that exits this many times in a row before it listens stops the whole run
MAX_FAILED_STARTS = 3
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: a worker that served this long before it died starts its backoff again from the first
STEADY_S = 60.0
#: how long one worker's answer to a reload is awaited (its own reload is bounded too)
RELOAD_TIMEOUT_S = RELOAD_ALL_TIMEOUT_S - 5


def refusal(config: Config, count: int) -> str | None:
    """Why ``count`` workers cannot run this config (one line for stderr), or None."""
    if not shared(config.state):
        return (f"--workers {count} needs the shared state backend: the local backend's meter and SQLite ledger "
                f"belong to one process, so each worker would spend the same credit; set "
                f"\"state\": {{\"backend\": \"shared\"}} (Postgres and Redis), or run one worker")
    metrics = config.metrics
    if metrics.enabled and metrics.port is None:
        return (f"--workers {count} with /metrics on the main port: a scrape would reach one worker at random; "
                f"set metrics.port (worker i serves /metrics on metrics.port + i) or metrics.enabled false")
    if metrics.enabled and metrics.port and metrics.port + count - 1 > 65535:
        return f"--workers {count}: metrics.port {metrics.port} + {count - 1} is past port 65535"
    return None


class Phase(enum.Enum):
    STARTING = "starting"  # spawned, not listening yet
    READY = "ready"  # listening, answering the parent
    WAITING = "waiting"  # exited unexpectedly; started again after its backoff
    DONE = "done"  # stopped for good


@attrs.define(eq=False)
class Worker:
    """One seat of the run, as the parent sees it (one process at a time in it)."""

    index: int
    phase: Phase = Phase.STARTING
    process: trio.Process | None = None
    stream: trio.SocketStream | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    binds: list[str] = attrs.field(factory=list)
    metrics_url: str | None = None
    ready_at: float | None = None
    starts: int = 0
    failed_starts: int = 0  # exits before listening, in a row
    crashes: int = 0  # unexpected exits in a row (for the backoff)
    replies: dict[int, trio.MemorySendChannel] = attrs.field(factory=dict)  # parent ticket -> waiter


class Fleet:
    """The parent of one ``--workers N`` run; ``run()`` is its whole life (the exit status)."""

    def __init__(self, config: Config, config_path: str, host: str, port: int, count: int,
                 say: Callable[..., None], flags: list[str]) -> None:
        self.config = config
        self.config_path = config_path
        self.host = host
        self.port = port
        self.count = count
        self.say = say
        self.flags = flags
        self.workers = [Worker(i) for i in range(count)]
        self.stopping: str | None = None  # the signal's name once a stop began
        self.failed: tuple[Worker, int] | None = None  # the worker that could not start, its status
        self.listening = False
        self._stop = trio.Event()
        self._changed = trio.Event()
        self._tickets = 0
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ the run

    async def run(self) -> int:
        hold = server_config(self.config.server, f"{self.host}:{self.port}")
        try:
            hold.bind_now(listen=False, reuse_port=True)
        except BindRefused as exc:
            print(f"tollhouse: {exc}", file=sys.stderr)
            return 2
        try:
            self.port = hold.listening[0].getsockname()[1]
            try:
                lock = StateDirLock.acquire(self.config.state_dir)
            except StateDirBusy as exc:
                print(f"tollhouse: cannot start: {exc}", file=sys.stderr)
                return 2
            with lock:
                return await self._run()
        finally:
            hold.close_listening()

    async def _run(self) -> int:
        with trio.open_signal_receiver(*STOP_SIGNALS) as stops, trio.open_signal_receiver(RELOAD_SIGNAL) as reloads:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_stops, stops)
                nursery.start_soon(self._watch_reloads, reloads)
                async with trio.open_nursery() as seats:
                    for worker in self.workers:
                        seats.start_soon(self._keep, worker)
                    seats.start_soon(self._say_listening)
                nursery.cancel_scope.cancel()
        return self._report()

    async def _say_listening(self) -> None:
        while not all(w.phase is Phase.READY for w in self.workers):
            if self.failed is not None or self.stopping is not None:
                return
            await self._wait_change()
        self.listening = True
        binds = self.workers[0].binds
        metrics = [w.metrics_url for w in self.workers if w.metrics_url]
        self.say(f"tollhouse listening on {' '.join(binds)} ({self.count} workers)", address=binds[0],
                 addresses=binds, admin_url=f"{binds[0]}/admin/ui", workers=self.count,
                 pids=[w.process.pid for w in self.workers if w.process is not None],
                 **({"metrics_urls": metrics} if metrics else {}))

    def _report(self) -> int:
        if self.failed is not None:
            worker, status = self.failed
            print(f"tollhouse: worker {worker.index} could not start (exit status {status}); every worker stopped",
                  file=sys.stderr)
            return status
        self.say(f"tollhouse stopped: {self.count} workers stopped", workers=self.count)
        return 0

    # ------------------------------------------------------------------ one seat

    async def _keep(self, worker: Worker) -> None:
        """Run the seat's worker, and again after each unexpected exit, until the stop."""
        while True:
            status, served = await self._run_once(worker)
            if self.stopping is not None or self.failed is not None:
                break
            if served is None:
                worker.failed_starts += 1
                if not self.listening or worker.failed_starts >= MAX_FAILED_STARTS:
                    self._fail(worker, status)
                    break
            else:
                worker.failed_starts = 0
                if served >= STEADY_S:
                    worker.crashes = 0
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** worker.crashes)
            worker.crashes += 1
            worker.phase = Phase.WAITING
            self._notify()
            self.say(f"tollhouse worker {worker.index} exited unexpectedly (status {status}); "
                     f"starting it again in {delay:g} s", level="error", worker=worker.index, status=status,
                     backoff_s=delay)
            with trio.move_on_after(delay):
                await self._stop.wait()
            if self.stopping is not None:
                break
        worker.phase = Phase.DONE
        self._notify()

    async def _run_once(self, worker: Worker) -> tuple[int, float | None]:
        """One worker process from spawn to exit: its status, and how long it served
        (None: it never listened)."""
        ours, theirs = socket.socketpair()
        try:
            seat = Seat(worker.index, self.count, theirs.fileno(), worker.starts + 1)
            command = [sys.executable, "-m", "gateway.cli", "serve", "--config", self.config_path,
                       "--host", self.host, "--port", str(self.port), "--worker-seat", seat.text(), *self.flags]
            worker.process = await trio.lowlevel.open_process(command, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        worker.starts += 1
        worker.phase = Phase.STARTING
        worker.ready_at = None
        worker.stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self._notify()
        if self.stopping is not None:  # a stop began while it was being spawned
            self._nursery.start_soon(self._tell_stop, worker, self.stopping)
        try:
            await self._listen(worker)
        finally:
            status = await worker.process.wait()
            await worker.stream.aclose()
            for waiter in worker.replies.values():
                waiter.close()
            worker.replies.clear()
        served = None if worker.ready_at is None else trio.current_time() - worker.ready_at
        return (status if status >= 0 else 128 - status), served

    async def _listen(self, worker: Worker) -> None:
        reader = MessageReader(worker.stream)
        try:
            while True:
                message = await reader.receive()
                if message is None:
                    return
                self._handle(worker, message)
        except BadMessage as exc:
            self.say(f"tollhouse worker {worker.index} sent {exc}; stopping it", level="error")
            self._signal(worker, signal.SIGTERM)

    def _handle(self, worker: Worker, message: Message) -> None:
        match message:
            case Ready(binds, metrics_url):
                worker.binds, worker.metrics_url = list(binds), metrics_url
                worker.phase, worker.ready_at = Phase.READY, trio.current_time()
                if worker.starts > 1:
                    self.say(f"tollhouse worker {worker.index} started again (start {worker.starts})",
                             worker=worker.index, pid=worker.process.pid)
                self._notify()
            case ReloadAll(ticket):
                self._nursery.start_soon(self._reload_all, worker, ticket)
            case Reloaded(ticket):
                waiter = worker.replies.pop(ticket, None)
                if waiter is not None:
                    waiter.send_nowait(message)
            case _:
                raise BadMessage(f"a parent's message from worker {worker.index}: {message!r}")

    def _fail(self, worker: Worker, status: int) -> None:
        self.failed = (worker, max(status, 1))
        for other in self.workers:
            self._signal(other, signal.SIGTERM)
        self._stop.set()
        self._notify()

    # ------------------------------------------------------------------ signals

    async def _watch_stops(self, signals) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping is None:
                self.stopping = name
                self._stop.set()
                self._notify()
                live = [w for w in self.workers if w.phase in (Phase.STARTING, Phase.READY)]
                self.say(f"tollhouse stopping ({name}): told every worker ({len(live)}); "
                         f"each finishes its requests within {self.config.server.shutdown_grace_s:g} s",
                         signal=name, workers=len(live))
                for worker in self.workers:
                    self._nursery.start_soon(self._tell_stop, worker, name)
                continue
            self.say(f"tollhouse stopping at once (second {name}): every worker stops now", signal=name)
            for worker in self.workers:
                self._signal(worker, signum)
            with trio.move_on_after(10):
                while not all(w.phase is Phase.DONE for w in self.workers):
                    await self._wait_change()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    async def _tell_stop(self, worker: Worker, name: str) -> None:
        """Tell a worker to stop (read once it listens; one still starting stops then)."""
        if worker.stream is None or worker.process is None or worker.process.returncode is not None:
            return
        try:
            await send(worker.stream, worker.lock, Stop(name))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it has exited: nothing to stop

    def _signal(self, worker: Worker, signum: int) -> None:
        if worker.process is not None and worker.process.returncode is None:
            try:
                worker.process.send_signal(signum)
            except ProcessLookupError:  # exited a moment ago: its exit is being read
                pass

    async def _watch_reloads(self, signals) -> None:
        async for _ in signals:
            self._nursery.start_soon(self._reload_all, None, None)

    # ------------------------------------------------------------------ reload

    async def _reload_all(self, asker: Worker | None, ticket: int | None) -> None:
        """Reload every worker (but ``asker``, which already did); tell ``asker`` how it
        went, and say it in one line."""
        outcomes: dict[int, dict] = {}

        async def one(worker: Worker) -> None:
            outcomes[worker.index] = await self._reload_one(worker)

        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                if worker is not asker:
                    nursery.start_soon(one, worker)
        views = [outcomes[i] for i in sorted(outcomes)]
        if asker is not None and ticket is not None:
            try:
                await send(asker.stream, asker.lock, ReloadAllDone(ticket, views))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the asker is gone; its answer with it
        self._say_reload(views, asker)

    async def _reload_one(self, worker: Worker) -> dict:
        if worker.phase is not Phase.READY:
            return {"worker": worker.index, "reloaded": False, "phase": worker.phase.value,
                    "note": "not serving now; it reads the config file when it starts"}
        self._tickets += 1
        ticket = self._tickets
        send_channel, receive_channel = trio.open_memory_channel[Reloaded](1)
        worker.replies[ticket] = send_channel
        try:
            await send(worker.stream, worker.lock, Reload(ticket))
            with trio.move_on_after(RELOAD_TIMEOUT_S):
                return (await receive_channel.receive()).view()
            return {"worker": worker.index, "reloaded": False, "error": "no answer in time"}
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            return {"worker": worker.index, "reloaded": False, "error": "exited during the reload"}
        finally:
            worker.replies.pop(ticket, None)

    def _say_reload(self, views: list[dict], asker: Worker | None) -> None:
        source = self.config_path
        via = "" if asker is None else f" (asked by worker {asker.index})"
        failed = [v for v in views if v.get("reloaded") is False]
        if not failed:
            generations = sorted({v["generation"] for v in views})
            numbers = ", ".join(str(g) for g in generations)
            self.say(f"tollhouse reloaded {source} on {len(views)} workers{via}: "
                     f"generation{'s' if len(generations) > 1 else ''} {numbers}", workers=views)
            return
        self.say(f"tollhouse reload incomplete ({source}){via}: workers "
                 f"{', '.join(str(v['worker']) for v in failed)} did not reload", level="warning", workers=views)

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()
