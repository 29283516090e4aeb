"""One gateway process: serve until told to stop, then stop without losing money.

SIGTERM (what ``docker stop`` and systemd send) or SIGINT begins a graceful stop:

1. hypercorn closes its listeners (new connections are refused) and closes idle
   keep-alive connections at once (a connection that finishes its response is
   closed rather than kept), so only requests in flight hold the stop;
2. those requests get up to ``server.shutdown_grace_s`` to finish, streams included;
3. at the end of the grace period the rest are cancelled; each settles exactly once
   through the dispatcher's shielded ``finally``, while the actors still run;
4. only then does hypercorn run the lifespan shutdown, where the runtime flushes the
   meter, stops the actors (the ledger is closed), the pools and the simulator, and
   releases the state directory's lock; the process exits 0.

A second signal during the stop ends the process at once, by that signal's default
action: nothing more is settled, and the holds of requests still in flight are
recovered at the next start, as after a kill.

SIGHUP reloads the config file (``Runtime.reload_from_source``): one line says the
new generation, or that the file was refused, each problem logged with its JSON path.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from functools import partial
from typing import Callable
from wsgiref.handlers import format_date_time

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.utils import LifespanFailureError

from gateway import gc_policy, http1
from gateway.app import Gateway
from gateway.config import ServerConfig, WebSocketConfig
from gateway.generation import ReloadRefused
from gateway.logs import LineOutput
from gateway.worker_link import WorkerLink
from protocols.errors import GatewayError

log = logging.getLogger("tollhouse")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP


class StartRefused(Exception):
    """The gateway's startup failed; the message says why (for the operator, not a bug)."""


class BindRefused(Exception):
    """The listening address could not be bound (in use, not this host's, not allowed)."""


class HypercornConfig(hypercorn.config.Config):
    """Hypercorn's config, remembering the listening sockets it creates, so a stop can
    tell when they are closed (hypercorn closes them itself, a few scheduler turns after
    the shutdown trigger fires)."""

    listening: tuple = ()
    request_head_timeout: float = math.inf  # read by ``gateway.http1.GatewayH11Protocol``
    prebound: hypercorn.config.Sockets | None = None

    _date: tuple[int, bytes] = (0, b"")  # the Date header's value, made once a second

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        """Hypercorn's headers for every answer, its ``Date`` formatted once per second
        instead of once per answer (the value only changes each second)."""
        if not self.include_date_header or self.alt_svc_headers or self._quic_addresses:
            return super().response_headers(protocol)
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, format_date_time(now).encode("ascii"))
        headers = [(b"date", self._date[1])]
        if self.include_server_header:
            headers.append((b"server", b"hypercorn-" + protocol.encode("ascii")))
        return headers

    def create_sockets(self) -> hypercorn.config.Sockets:
        if self.prebound is not None:  # bound by ``bind_now``: hand those over once
            sockets, self.prebound = self.prebound, None
            return sockets
        sockets = super().create_sockets()
        self.listening = (*sockets.secure_sockets, *sockets.insecure_sockets)
        return sockets

    def bind_now(self, listen: bool = True, reuse_port: bool = False) -> None:
        """Bind the listening sockets before anything else starts, so an address in use
        is one ``BindRefused`` (no runtime started, no exception group) and the address
        printed later is one that is already bound. ``reuse_port``: with SO_REUSEPORT,
        beside the other workers of ``--workers N``; ``listen=False`` only holds the
        address (their parent: it takes no connection)."""
        workers, self.workers = self.workers, (2 if reuse_port else 1)  # hypercorn's switch for SO_REUSEPORT
        try:
            sockets = super().create_sockets()
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if listen:
                    sock.listen(self.backlog)  # connections wait in the backlog while the gateway starts
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise BindRefused(f"cannot listen on {' '.join(self.bind)}: {reason.lower()}") from None
        finally:
            self.workers = workers  # read again by ``hypercorn.trio.serve``, which warns past 1
        self.listening = (*sockets.secure_sockets, *sockets.insecure_sockets)
        self.prebound = sockets

    def close_listening(self) -> None:
        for sock in self.listening:
            sock.close()

    async def wait_listeners_closed(self, turns: int = 1000) -> None:
        for _ in range(turns):
            if all(sock.fileno() == -1 for sock in self.listening):
                return
            await trio.lowlevel.checkpoint()


def server_config(server: ServerConfig, bind: str | None = None,
                  websocket: WebSocketConfig | None = None) -> HypercornConfig:
    """Hypercorn's config for our ``server`` settings: the one place it is built, for
    ``tollhouse serve`` and for the test harness alike.

    Hypercorn's ``read_timeout`` stays unset: it bounds every read of a connection,
    also the ones it waits on while a long stream is sent to a client that has nothing
    more to say, and would cut such streams. The request head has its own deadline
    (``gateway.http1``) and the request body its own total one (``read_body``).
    Building it installs ``gateway.http1``'s protocol, which reads that deadline.
    """
    http1.install()
    cfg = HypercornConfig()
    cfg.bind = [bind or f"{server.host}:{server.port}"]
    cfg.accesslog = None  # the gateway writes its own access line (``gateway.access_log``)
    cfg.errorlog = logging.getLogger("hypercorn.error")  # a logger is used as is: no second handler of its own
    cfg.keep_alive_timeout = server.keep_alive_timeout_s
    cfg.keep_alive_max_requests = server.keep_alive_max_requests
    cfg.request_head_timeout = server.read_timeout_s
    cfg.read_timeout = None
    cfg.graceful_timeout = server.shutdown_grace_s
    websocket = websocket or WebSocketConfig()
    cfg.websocket_max_message_size = websocket.max_message_bytes
    cfg.websocket_ping_interval = websocket.ping_interval_s
    return cfg


async def serve(gateway: Gateway, bind: str, say: Callable[..., None], link: WorkerLink | None = None,
                output: LineOutput | None = None) -> None:
    """Serve ``gateway`` on ``bind`` until a stop signal; returns after a graceful stop.

    Says one line once it listens (the bound address: a port of 0 picks a free one),
    one when a stop begins and one when it has ended (``say(text, **fields)``). Raises
    ``BindRefused`` when the address cannot be bound (before anything starts) and
    ``StartRefused`` when the gateway could not start.

    With ``link`` this process is one worker of ``tollhouse serve --workers N``: it
    listens with ``SO_REUSEPORT`` beside its siblings, tells the parent (not stdout)
    that it listens, names itself in its lines, reloads when the parent asks, and
    stops gracefully when the parent is gone. ``output``, the log's, has its held
    access lines written while it serves.
    """
    cfg = server_config(gateway.config.server, bind, gateway.config.websocket)
    cfg.bind_now(reuse_port=link is not None)
    try:
        await _serve_bound(gateway, cfg, say, link, output)
    finally:
        cfg.close_listening()


async def _serve_bound(gateway: Gateway, cfg: HypercornConfig, say: Callable[..., None],
                       link: WorkerLink | None, output: LineOutput | None) -> None:
    stop = trio.Event()
    name = "tollhouse" if link is None else f"tollhouse worker {link.seat.index}"
    if link is not None:
        gateway.runtime.fleet = link  # POST /admin/reload reaches the other workers through it
    stopper = _Stopper(stop, gateway, cfg, say, name)
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, trio.open_signal_receiver(RELOAD_SIGNAL) as reloads:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, signals, stopper)
                nursery.start_soon(_watch_reloads, reloads, gateway, say, name)
                if output is not None:
                    nursery.start_soon(output.write_held)
                try:
                    async with trio.open_nursery() as server:
                        binds = await server.start(partial(hypercorn.trio.serve, gateway, cfg,
                                                           shutdown_trigger=stop.wait))
                        if gateway.startup_error is None:  # hypercorn binds even after a failed startup
                            gc_policy.apply()
                            if link is None:
                                say(f"tollhouse listening on {' '.join(binds)}", address=binds[0],
                                    addresses=binds, admin_url=f"{binds[0]}/admin/ui")
                            else:
                                nursery.start_soon(link.run, partial(reload_and_say, gateway.runtime, say, name),
                                                   stopper.begin)
                                await link.ready(list(binds), gateway.runtime.metrics_url)
                                say(f"{name} listening on {' '.join(binds)}", address=binds[0], addresses=binds)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            if gateway.startup_error is None or not _failed_startup(exc):
                raise
            error = gateway.startup_error
            raise StartRefused(str(error) or type(error).__name__) from None
    report = gateway.traffic.report()
    say(f"{name} stopped: of {_requests(report.in_flight_at_stop)} in flight, {report.finished} finished "
        f"and {report.cut} cut at the end of the grace period; ledger closed",
        in_flight=report.in_flight_at_stop, finished=report.finished, cut=report.cut)


@attrs.define
class _Stopper:
    """Begins the graceful stop once (a signal, a worker's parent's ``Stop``, or its
    parent gone); a second signal ends the process at once."""

    stop: trio.Event
    gateway: Gateway
    cfg: HypercornConfig
    say: Callable[..., None]
    name: str

    async def begin(self, why: str) -> bool:
        """Start the stop; False when it had already begun."""
        if self.stop.is_set():
            return False
        in_flight = self.gateway.traffic.begin_stop()
        self.stop.set()
        await self.cfg.wait_listeners_closed()  # so the line below is true when it is read
        self.say(f"{self.name} stopping ({why}): no new connections; {_requests(in_flight)} in flight, given up to "
                 f"{self.cfg.graceful_timeout:g} s to finish (a second signal stops at once)",
                 signal=why, in_flight=in_flight, grace_s=self.cfg.graceful_timeout)
        return True


async def _watch_signals(signals, stopper: _Stopper) -> None:
    seen = 0
    async for signum in signals:
        name = signal.Signals(signum).name
        seen += 1
        if seen == 1:  # the stop may have begun already (a worker told by its parent): it goes on
            await stopper.begin(name)
            continue
        stopper.say(f"{stopper.name} stopping at once (second {name}): "
                    f"{_requests(stopper.gateway.traffic.in_flight)} in flight "
                    f"left unsettled; their holds are recovered at the next start",
                    signal=name, in_flight=stopper.gateway.traffic.in_flight)
        _die_by(signum)


async def _watch_reloads(signals, gateway: Gateway, say: Callable[..., None], name: str) -> None:
    async for _ in signals:
        await reload_and_say(gateway.runtime, say, name)


@attrs.frozen
class ReloadOutcome:
    """How one reload of the config file went: the new generation, or why not."""

    generation: int | None  # the running generation's number when refused or failed
    problems: list[dict] = attrs.field(factory=list)  # refused: {"path", "message"} each
    error: str | None = None  # failed (the ledger, or a bug): the running generation stays

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None


async def reload_and_say(runtime, say: Callable[..., None], name: str = "tollhouse") -> ReloadOutcome:
    """Read the config file again and apply it; say one line of how it went."""
    source = runtime.source.path if runtime.source is not None else "no config file"
    running = runtime.generation.number if runtime.generation else 0
    try:
        generation = await runtime.reload_from_source()
    except ReloadRefused as refused:
        for path, message in refused.problems:
            log.error("config reload refused: %s: %s", path, message)
        problems = [{"path": path, "message": runtime.redactor.text(message)} for path, message in refused.problems]
        say(f"{name} reload refused ({source}): {len(refused.problems)} problems; "
            f"generation {running} keeps running", level="warning", config_file=str(source), generation=running,
            errors=problems)
        return ReloadOutcome(running, problems)
    except GatewayError as exc:  # the ledger could not record the new keys
        log.error("config reload failed: %s", exc.message)
        say(f"{name} reload failed ({source}): {exc.message}", level="error")
        return ReloadOutcome(running, error=exc.message)
    except Exception:  # a bug in the reload must not end a serving gateway
        log.exception("config reload failed")
        say(f"{name} reload failed ({source}); generation {running} keeps running", level="error")
        return ReloadOutcome(running, error="the reload failed; see this worker's log")
    say(f"{name} reloaded {source}: generation {generation.number}", generation=generation.number)
    return ReloadOutcome(generation.number)


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def _die_by(signum: int) -> None:
    """End the process now, as the signal's default action would have."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # only if the signal could not be delivered


def _failed_startup(exc: BaseException) -> bool:
    """Whether ``exc`` is hypercorn's report of a failed lifespan startup (maybe grouped)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(LifespanFailureError)[1] is None
    return isinstance(exc, LifespanFailureError)
