"""``tollhouse serve | check-config | version | simulate``."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

import trio

from gateway.config import ConfigError, load_config
from gateway.config_observe import LOG_FORMATS, LOG_LEVELS
from protocols.money import FREE


def _serve(args) -> int:
    from gateway import logs
    from gateway.redaction import redactor_for

    seat = _seat(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:  # one structured line, each problem with its JSON path
        logs.configure(args.log_level or "info", args.log_format or logs.AUTO)
        logs.logger("tollhouse").error("config error", config_file=args.config,
                                       errors=logs.config_problems(exc.problems))
        return 2
    if seat is None and args.workers > 1:
        from gateway import workers

        refusal = workers.refusal(config, args.workers)
        if refusal is not None:
            print(f"tollhouse: {refusal}", file=sys.stderr)
            return 2
    settings = config.logging
    redaction = logs.LogRedaction(redactor_for(config))
    level = args.log_level or settings.level
    output = logs.LineOutput(sys.stdout)  # holds access lines briefly: ``serve`` writes them
    logs.configure(level, args.log_format or settings.format, redaction,
                   fields=None if seat is None else {"worker": seat.index}, output=output)
    log = logs.logger("tollhouse")
    # the start, listening and stop lines are written whatever the level (at it, when it is above info)
    spoken = level if logs.LEVELS[level] > logs.LEVELS["info"] else "info"

    def say(text: str, level: str = "info", **fields) -> None:
        getattr(log, max(level, spoken, key=logs.LEVELS.__getitem__))(text, **fields)

    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    if seat is None:
        say("tollhouse starting", config_file=args.config, state_dir=config.state_dir,
            providers={name: p.family for name, p in config.providers.items()}, models=sorted(config.models),
            aliases=sorted(config.aliases), keys=len(config.keys), workers=args.workers)
    if seat is None and args.workers > 1:
        from gateway.workers import Fleet

        fleet = Fleet(config, args.config, host, port, args.workers, say, _worker_flags(args))
        return trio.run(fleet.run)
    return _serve_one(args, config, f"{host}:{port}", say, redaction, seat, output)


def _serve_one(args, config, bind: str, say, redaction, seat, output) -> int:
    """One gateway process: alone, or one worker of ``--workers N`` (``seat``)."""
    from gateway.access_log import AccessLog
    from gateway.app import create_app
    from gateway.generation import ConfigSource
    from gateway.process import BindRefused, StartRefused, serve
    from gateway.worker_link import WorkerLink

    app = create_app(config, ConfigSource(Path(args.config)),  # read again on SIGHUP or POST /admin/reload
                     seat=seat)
    app.runtime.observers.add(AccessLog())
    app.runtime.observers.prompts = config.logging.log_prompts
    app.runtime.on_redactor.append(redaction.use)  # secrets a reload brings are out of the log too

    def prompts(new) -> None:
        app.runtime.observers.prompts = new.logging.log_prompts

    app.runtime.on_reload.append(prompts)
    try:
        trio.run(serve, app, bind, say, None if seat is None else WorkerLink(seat), output)
    except BindRefused as exc:
        print(f"tollhouse: {exc}", file=sys.stderr)
        return 2
    except StartRefused as exc:
        print(f"tollhouse: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _seat(args):
    if args.worker_seat is None:
        return None
    from gateway.worker_link import Seat

    return Seat.parse(args.worker_seat)


def _worker_flags(args) -> list[str]:
    """The flags a worker is started with besides its config, address and seat."""
    flags = []
    if args.log_level:
        flags += ["--log-level", args.log_level]
    if args.log_format:
        flags += ["--log-format", args.log_format]
    return flags


def _check(args) -> int:
    """Validate a config; on success say what it gives away on purpose, so an audit can see it."""
    config = load_config(args.config)
    print(f"{args.config}: OK ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.pricing)} prices, {len(config.keys)} keys)")
    free = sorted(label for label, price in config.pricing.items() if price == FREE)
    if free:
        print(f"  charged nothing (free): {', '.join(free)}")
    unlimited = [key.name for key in config.keys if key.unlimited]
    if unlimited:
        print(f"  keys without a spending limit (unlimited): {', '.join(unlimited)}")
    return 0


def version() -> str:
    """The installed distribution's version (the source tree's when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tollhouse")
    except PackageNotFoundError:
        return "unknown"


def _version(args) -> int:
    print(f"tollhouse {version()}")
    return 0


def _simulate(args) -> int:
    from providers.simulator import Simulator

    sim = Simulator(args.tokens_per_second)

    async def main():
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(sim.serve, args.host, args.port))
            print(f"simulator listening on {url}", flush=True)

    trio.run(main)
    return 0


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS}, got {n}")
    return n


#: more worker processes than this is a typo, not a machine
MAX_WORKERS = 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollhouse", description="An LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"tollhouse {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway", description=(
        "Serve the gateway until SIGTERM or Ctrl-C. The address is printed once it is bound; "
        "an address that cannot be bound (in use) is one line on stderr and exit status 2."))
    serve.add_argument("--config", default="config.json", metavar="FILE",
                       help="the config file (default: %(default)s); a bad one is refused with exit status 2")
    serve.add_argument("--host", metavar="ADDRESS",
                       help="the address to listen on, overriding server.host (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, metavar="PORT",
                       help="the port to listen on, overriding server.port; 0 picks a free one")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="serve with N worker processes on the one port (SO_REUSEPORT); above 1 needs "
                            "the shared state backend (\"state\": {\"backend\": \"shared\"})")
    serve.add_argument("--worker-seat", help=argparse.SUPPRESS)  # i/N/fd: given by a --workers parent only
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="overrides logging.level (default info)")
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       help="overrides logging.format: json lines, console, or auto (console on a terminal)")
    serve.set_defaults(run=_serve)
    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config, naming every problem by its JSON path (exit status 2).")
    check.add_argument("--config", default="config.json", metavar="FILE",
                       help="the config file (default: %(default)s)")
    check.set_defaults(run=_check)
    ver = sub.add_parser("version", help="print the version and exit")
    ver.set_defaults(run=_version)
    sim = sub.add_parser("simulate", help="run the simulated upstream alone")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8788)
    sim.add_argument("--tokens-per-second", type=float, default=20.0)
    sim.set_defaults(run=_simulate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("hypercorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
