"""The gateway's log: one line per event on stdout, JSON for machines, readable for people.

``configure`` runs once, when ``tollhouse serve`` starts. structlog's own lines
(``logger(name)``: the access line, startup and stop) and the standard library's
(hypercorn, the actors, the rest of the gateway, with their ``extra=`` fields; one
handler on the root logger whose formatter is structlog's ``ProcessorFormatter``) end
in the same processors and come out in one format: JSON lines when stdout is a pipe or a file (``format: json``), structlog's
console renderer when it is a terminal (``format: console``), ``auto`` choosing by
``isatty``.

Every line carries ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and
``event``, and the ``request_id`` bound for the request it was written in
(``request_context``: structlog's contextvars, so a line from any module, an actor
answering inline or an upstream task of that request carries it too).

Secrets: the rendered line itself goes through the gateway's ``Redactor`` (every
secret the config holds, in each of its escaped forms, and key-shaped tokens), so no
field, nested value or traceback can print one, whoever wrote the line.

Writing: every line goes through one ``LineOutput``. JSON lines are compact ASCII
(``json_line``). The access line is held up to ``HOLD_S`` and written with the lines
after it (one write per batch, not a system call per request); every other line is
written at once, behind what is held.

Hypercorn's error logger would otherwise get its own stderr handler besides the
root's (the same line twice): ``process.server_config`` hands hypercorn the logger
itself, and ``configure`` clears any handler already on it.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
from contextlib import AbstractContextManager
from typing import Any, Callable, TextIO

import structlog
import structlog.tracebacks
import trio

from protocols import json_codec
from protocols.redact import Redactor

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
JSON, CONSOLE, AUTO = "json", "console", "auto"

#: loggers that would print past the root handler if left as their library sets them up
SERVER_LOGGERS = ("hypercorn.error", "hypercorn.access")

# ``path: message`` as the config reader writes a problem; a path may hold ``["a: b"]``
_PROBLEM = re.compile(r'^((?:\[[^\]]*\]|[^\[:])+): (.*)$', re.DOTALL)

_STAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


#: the logger whose lines are held (``LineOutput``): one line per request
HELD_LOGGER = "tollhouse.access"
HOLD_S = 0.1  # how long a held line may wait for the lines after it
HOLD_MAX_BYTES = 64 * 1024  # held past this, they are written at once


class LineOutput:
    """The one way every line reaches the stream. The access line, one per request, is
    held and written together with the lines after it, at most ``HOLD_S`` later
    (``write_held`` runs in the serving process, and a process that exits writes what
    it holds): one write to the stream per batch, where a write per line costs a
    system call per request. Every other line is written at once, behind anything
    held, so the stream's order is the order the lines were logged in. A process
    killed outright loses at most the last ``HOLD_S`` of access lines (the ledger,
    not the log, is the record of what was charged). Lines may come from worker
    threads too: one lock guards the buffer and the stream."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._held: list[str] = []
        self._held_bytes = 0
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def hold(self, line: str) -> None:
        with self._lock:
            self._held.append(line)
            self._held_bytes += len(line)
            if self._held_bytes > HOLD_MAX_BYTES:
                self._write_held()

    def now(self, text: str) -> None:
        with self._lock:
            self._held.append(text)
            self._write_held()

    def flush(self) -> None:
        with self._lock:
            if self._held:
                self._write_held()

    def _write_held(self) -> None:
        text = "".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        self.stream.write(text)
        self.stream.flush()

    async def write_held(self) -> None:
        """Write held lines every ``HOLD_S`` (the serving process runs this for its life).
        A stream that refuses them (a closed pipe, a full disk) loses that batch, said
        on stderr, and the gateway serves on, as it would for a line written at once."""
        while True:
            await trio.sleep(HOLD_S)
            if self._held:
                try:
                    self.flush()
                except OSError as exc:
                    print(f"tollhouse: the log's stream refused its held access lines ({exc})", file=sys.stderr)


class _NowStream:
    """The standard library handler's stream: each of its lines written at once."""

    def __init__(self, output: LineOutput) -> None:
        self.output = output

    def write(self, text: str) -> None:
        self.output.now(text)

    def flush(self) -> None:
        """``now`` flushed already."""


class NamedWriter:
    """structlog's writer for ``logger(name)``: knows its name, writes through the
    process's ``LineOutput`` (held for the access logger, at once for the rest)."""

    def __init__(self, output: LineOutput, name: str) -> None:
        self.name = name
        self._output = output
        self._held = name == HELD_LOGGER

    def msg(self, message: str) -> None:
        if self._held:
            self._output.hold(message + "\n")
        else:
            self._output.now(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _add_name(writer: Any, _: str, event_dict: dict) -> dict:
    event_dict["logger"] = getattr(writer, "name", None)
    return event_dict


def choose_format(setting: str, stream: TextIO) -> str:
    """``json`` or ``console``: ``auto`` is the console renderer on a terminal only."""
    if setting != AUTO:
        return setting
    isatty = getattr(stream, "isatty", None)
    return CONSOLE if isatty is not None and isatty() else JSON


def _leading(_: Any, __: str, event_dict: dict) -> dict:
    """``timestamp``, ``level``, ``logger`` and ``event`` first: a line reads left to right."""
    head = {key: event_dict.pop(key) for key in ("timestamp", "level", "logger", "event") if key in event_dict}
    head.update(event_dict)
    return head


class _Fields:
    """Adds the same fields to every line (a line's own field of that name wins)."""

    def __init__(self, fields: dict) -> None:
        self.fields = dict(fields)

    def __call__(self, _: Any, __: str, event_dict: dict) -> dict:
        for name, value in self.fields.items():
            event_dict.setdefault(name, value)
        return event_dict


class LogRedaction:
    """The redactor every rendered line passes through. A reload that brings new secrets
    hands the runtime's new redactor to ``use`` (``Runtime.on_redactor``), so a secret
    first seen in a reloaded config is out of the log from then on."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def use(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def text(self, s: str) -> str:
        return self.redactor.text(s)


class RedactedRenderer:
    """A renderer whose every line is redacted after rendering (fields, nested values and
    tracebacks alike)."""

    def __init__(self, render: Callable[..., str], redactor: Redactor | LogRedaction) -> None:
        self.render = render
        self.redactor = redactor

    def __call__(self, logger: Any, method: str, event_dict: dict) -> str:
        return self.redactor.text(self.render(logger, method, event_dict))


def _rendering(fmt: str, redactor: Redactor | LogRedaction, colors: bool) -> list:
    """The last processors of every line: tracebacks, key order, the renderer, redaction.
    A traceback never shows a frame's local variables: they may hold a prompt."""
    if fmt == CONSOLE:
        console = structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)
        return [RedactedRenderer(console, redactor)]
    tracebacks = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False))
    return [tracebacks, _leading, RedactedRenderer(json_line, redactor)]


def _json_fallback(value: Any) -> Any:
    """A value JSON has no form for, as structlog's own renderer writes it."""
    own = getattr(value, "__structlog__", None)
    return own() if own is not None else repr(value)


def json_line(_: Any, __: str, event_dict: dict) -> str:
    """A line's JSON: compact and ASCII (``\\uXXXX`` escapes), whatever the stream's
    encoding (``json_codec.dumps_ascii``: orjson, a few times faster than ``json`` on an
    access line, where it can). A value JSON has no form for is written as structlog
    writes it (``__structlog__``, else its ``repr``)."""
    return json_codec.dumps_ascii(event_dict, _json_fallback)


def formatter(fmt: str, redactor: Redactor | LogRedaction, colors: bool = False,
              constant: list | None = None) -> structlog.stdlib.ProcessorFormatter:
    """The root handler's formatter: the standard library's lines, rendered as structlog's."""
    constant = constant or []
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                           structlog.stdlib.add_logger_name, _STAMP, structlog.stdlib.ExtraAdder(), *constant],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_rendering(fmt, redactor, colors)])


def configure(level: str = "info", fmt: str = AUTO, redactor: Redactor | LogRedaction | None = None,
              stream: TextIO | None = None, fields: dict | None = None, output: LineOutput | None = None) -> str:
    """Send every log line of this process to ``stream`` (stdout) in one format; returns
    the format chosen. Called once per process, at start (``tollhouse serve``).

    structlog's own loggers (``logger(name)``) write to the stream through ``output``,
    filtered by level before any work: the access line, written once per request, costs
    a third of what a trip through ``logging`` would (``bench/access_log.py``). The standard
    library's lines go through the root handler and the same renderer. ``fields`` are
    on every line (a worker of ``--workers N`` says ``worker: i``). Every line goes
    through ``output`` (made for ``stream`` when not given), which holds access lines
    briefly: a serving process runs its ``write_held``.
    """
    stream = (sys.stdout if stream is None else stream) if output is None else output.stream
    output = LineOutput(stream) if output is None else output
    constant = [_Fields(fields)] if fields else []
    chosen = choose_format(fmt, stream)
    colors = chosen == CONSOLE and _tty(stream)
    redactor = redactor or Redactor()
    handler = logging.StreamHandler(_NowStream(output))  # type: ignore[arg-type]
    handler.setFormatter(formatter(chosen, redactor, colors, constant))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    for name in SERVER_LOGGERS:
        server = logging.getLogger(name)
        server.handlers.clear()
        server.propagate = True
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, _add_name,
                    _STAMP, *constant, *_rendering(chosen, redactor, colors)],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda name="tollhouse", *_: NamedWriter(output, name),
        cache_logger_on_first_use=True)
    return chosen


def logger(name: str) -> Any:
    """A structlog logger whose lines say ``logger: name`` (as the standard library's
    do); it takes the configuration in force at its first line."""
    return structlog.get_logger(name)


def _tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def request_context(request_id: str) -> AbstractContextManager:
    """Every line logged inside the block, by any module or child task, carries
    ``request_id``; the binding is undone on the way out."""
    return _RequestBound(request_id)


class _RequestBound:
    """``request_id`` bound for a block: the contextvar set on the way in and reset by
    its token on the way out (structlog's ``bound_contextvars`` reads the whole context
    to save what it replaces, once per request)."""

    __slots__ = ("request_id", "_tokens")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(request_id=self.request_id)

    def __exit__(self, *_: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)


def config_problems(problems: list[str]) -> list[dict]:
    """A config's problems as ``{"path", "problem"}`` objects, for one structured line."""
    out = []
    for text in problems:
        match = _PROBLEM.match(text)
        out.append({"path": match.group(1), "problem": match.group(2)} if match else {"path": "$", "problem": text})
    return out
