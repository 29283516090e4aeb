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
from functools import partial
from typing import Callable

import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.utils import LifespanFailureError

from gateway import http1
from gateway.app import Gateway
from gateway.config import ServerConfig, WebSocketConfig
from gateway.generation import ReloadRefused
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

    def create_sockets(self) -> hypercorn.config.Sockets:
        if self.prebound is not None:  # bound by ``bind_now``: hand those over once
            sockets, self.prebound = self.prebound, None
            return sockets
        sockets = super().create_sockets()
        self.listening = (*sockets.secure_sockets, *sockets.insecure_sockets)
        return sockets

    def bind_now(self) -> None:
        """Bind the listening sockets before anything else starts, so an address in use
        is one ``BindRefused`` (no runtime started, no exception group) and the address
        printed later is one that is already bound."""
        try:
            sockets = super().create_sockets()
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                sock.listen(self.backlog)  # connections wait in the backlog while the gateway starts
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise BindRefused(f"cannot listen on {' '.join(self.bind)}: {reason.lower()}") from None
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


async def serve(gateway: Gateway, bind: str, say: Callable[..., None]) -> None:
    """Serve ``gateway`` on ``bind`` until a stop signal; returns after a graceful stop.

    Says one line once it listens (the bound address: a port of 0 picks a free one),
    one when a stop begins and one when it has ended (``say(text, **fields)``). Raises
    ``BindRefused`` when the address cannot be bound (before anything starts) and
    ``StartRefused`` when the gateway could not start.
    """
    cfg = server_config(gateway.config.server, bind, gateway.config.websocket)
    cfg.bind_now()
    try:
        await _serve_bound(gateway, cfg, say)
    finally:
        cfg.close_listening()


async def _serve_bound(gateway: Gateway, cfg: HypercornConfig, say: Callable[[str], None]) -> None:
    stop = trio.Event()
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, trio.open_signal_receiver(RELOAD_SIGNAL) as reloads:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_signals, signals, stop, gateway, cfg, say)
                nursery.start_soon(_watch_reloads, reloads, gateway, say)
                try:
                    async with trio.open_nursery() as server:
                        binds = await server.start(partial(hypercorn.trio.serve, gateway, cfg,
                                                           shutdown_trigger=stop.wait))
                        if gateway.startup_error is None:  # hypercorn binds even after a failed startup
                            say(f"tollhouse listening on {' '.join(binds)}", address=binds[0],
                                addresses=binds, admin_url=f"{binds[0]}/admin/ui")
                finally:
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            if gateway.startup_error is None or not _failed_startup(exc):
                raise
            error = gateway.startup_error
            raise StartRefused(str(error) or type(error).__name__) from None
    report = gateway.traffic.report()
    say(f"tollhouse stopped: of {_requests(report.in_flight_at_stop)} in flight, {report.finished} finished "
        f"and {report.cut} cut at the end of the grace period; ledger closed",
        in_flight=report.in_flight_at_stop, finished=report.finished, cut=report.cut)


async def _watch_signals(signals, stop: trio.Event, gateway: Gateway, cfg: HypercornConfig,
                         say: Callable[..., None]) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stop.is_set():
            in_flight = gateway.traffic.begin_stop()
            stop.set()
            await cfg.wait_listeners_closed()  # so the line below is true when it is read
            say(f"tollhouse stopping ({name}): no new connections; {_requests(in_flight)} in flight, given up to "
                f"{cfg.graceful_timeout:g} s to finish (a second signal stops at once)",
                signal=name, in_flight=in_flight, grace_s=cfg.graceful_timeout)
            continue
        say(f"tollhouse stopping at once (second {name}): {_requests(gateway.traffic.in_flight)} in flight "
            f"left unsettled; their holds are recovered at the next start",
            signal=name, in_flight=gateway.traffic.in_flight)
        _die_by(signum)


async def _watch_reloads(signals, gateway: Gateway, say: Callable[..., None]) -> None:
    runtime = gateway.runtime
    async for _ in signals:
        source = runtime.source.path if runtime.source is not None else "no config file"
        try:
            generation = await runtime.reload_from_source()
        except ReloadRefused as refused:
            for path, message in refused.problems:
                log.error("config reload refused: %s: %s", path, message)
            running = runtime.generation.number if runtime.generation else 0
            say(f"tollhouse reload refused ({source}): {len(refused.problems)} problems; "
                f"generation {running} keeps running", level="warning", config_file=str(source), generation=running,
                errors=[{"path": path, "message": message} for path, message in refused.problems])
        except GatewayError as exc:  # the ledger could not record the new keys
            log.error("config reload failed: %s", exc.message)
            say(f"tollhouse reload failed ({source}): {exc.message}", level="error")
        except Exception:  # a bug in the reload must not end a serving gateway
            log.exception("config reload failed")
            say(f"tollhouse reload failed ({source}); generation "
                f"{runtime.generation.number if runtime.generation else 0} keeps running", level="error")
        else:
            say(f"tollhouse reloaded {source}: generation {generation.number}")


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
