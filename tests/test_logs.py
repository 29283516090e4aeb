"""The log's format and its rules, line by line: the format chosen for a terminal or a
pipe, one format for structlog's lines and the standard library's, secrets redacted in
every part of a line, the request id bound and unbound, actors' crash and cooldown lines.

``gateway.logs.configure`` changes the process's logging; the tests that call it run
in a child process (``_run``), so the suite's own logging stays as pytest set it.
"""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actors.cooldown import CooldownActor, CooldownCore, Outcome
from actors.supervisor import Supervisor
from gateway.logs import CONSOLE, JSON, choose_format, config_problems
from protocols import errors as E

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-log-secret-0123456789abcdef"

# a child that configures the log and writes one line of each kind
LINES = f"""
import logging, sys
from gateway import logs
from protocols.redact import Redactor
logs.configure("info", sys.argv[1], Redactor({{"{SECRET}"}}))
with logs.request_context("req_1"):
    logs.logger("tollhouse.access").info("request", key="main", nested={{"echo": "{SECRET}"}})
    logging.getLogger("tollhouse.dispatch").warning("upstream said %s", "{SECRET}", extra={{"credential": "c1"}})
def crash(prompt):
    raise RuntimeError("quoting {SECRET}")
try:
    crash("a prompt in a local variable")
except RuntimeError:
    logging.getLogger("tollhouse.actors").exception("actor crashed", extra={{"actor": "usage"}})
logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:1")
logging.getLogger("tollhouse").debug("not shown at info")
"""


def _run(fmt: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINES, fmt], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_pipe_gets_json_lines_with_every_field_and_the_request_id():
    done = _run("auto")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    access, warning, crash, server = [json.loads(line) for line in done.stdout.splitlines()]
    assert list(access)[:4] == ["timestamp", "level", "logger", "event"]
    assert (access["event"], access["key"], access["request_id"], access["logger"]) == (
        "request", "main", "req_1", "tollhouse.access")
    assert (warning["level"], warning["credential"], warning["request_id"]) == ("warning", "c1", "req_1")
    assert (crash["event"], crash["actor"], crash["level"]) == ("actor crashed", "usage", "error")
    assert "request_id" not in crash, "the binding ends with its block"
    assert crash["exception"][0]["exc_type"] == "RuntimeError"
    assert crash["exception"][0]["frames"][-1]["name"] == "crash"
    assert server["logger"] == "hypercorn.error" and server["timestamp"].endswith("Z")


def test_no_secret_in_any_part_of_a_line():
    for fmt in (JSON, CONSOLE):
        done = _run(fmt)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
        assert done.stdout.count("[redacted]") >= 3  # a nested field, a message, a traceback
        assert "a prompt in a local variable" not in done.stdout, "no frame's locals"


def test_a_terminal_gets_the_console_renderer():
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", LINES, "auto"], cwd=ROOT, stdout=follower,
                                 stderr=subprocess.DEVNULL)
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert child.wait(timeout=60) == 0
    finally:
        os.close(leader)
    text = output.decode()
    first = text.splitlines()[0]
    assert not first.startswith("{") and "request" in first and "key" in first and "req_1" in first
    assert "\x1b[" in text, "colours on a terminal"
    assert SECRET not in text


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("setting,tty,chosen", [
    ("auto", True, CONSOLE), ("auto", False, JSON), ("json", True, JSON), ("console", False, CONSOLE)])
def test_the_format_follows_the_setting_and_auto_asks_the_stream(setting, tty, chosen):
    assert choose_format(setting, FakeStream(tty)) == chosen


def test_config_problems_keep_their_json_paths():
    assert config_problems(["streamin: unknown setting", 'pricing["a: b"].input: must be a decimal', "odd"]) == [
        {"path": "streamin", "problem": "unknown setting"},
        {"path": 'pricing["a: b"].input', "problem": "must be a decimal"},
        {"path": "$", "problem": "odd"}]


async def test_a_rest_says_when_it_starts_and_when_it_ends(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="tollhouse.cooldown")
    sup = Supervisor()
    cooldown = sup.add("cooldown", lambda: CooldownActor(CooldownCore(1.0, 60.0, 0.0), lambda _: True), 8, 5)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        start = trio.current_time()
        await cooldown.ask(Outcome("p", "m", "c1", E.UpstreamRateLimited("slow down", retry_after=30)))
        await cooldown.ask(Outcome("p", "m", "c2", E.UpstreamOverloaded("busy", retry_after=5)))
        started = [r for r in caplog.records if r.getMessage() == "cooldown started"]
        assert [(r.credential, r.scope, r.wait_s) for r in started] == [("c1", "model", 30.0), ("c2", "credential", 5.0)]
        with trio.fail_after(60):
            while len([r for r in caplog.records if r.getMessage() == "cooldown ended"]) < 2:
                await trio.sleep(1)
        ended = [r for r in caplog.records if r.getMessage() == "cooldown ended"]
        # the actor woke at each end by itself: the later-begun, sooner rest first
        assert [(r.credential, r.reason) for r in ended] == [("c2", "overloaded"), ("c1", "rate_limited")]
        assert trio.current_time() - start < 32
        nursery.cancel_scope.cancel()


async def test_a_crash_and_its_restart_are_each_one_line(caplog):
    class Fragile(CooldownActor):
        def handle(self, msg, now):
            raise RuntimeError("boom")

    caplog.set_level(logging.INFO, logger="tollhouse.actors")
    sup = Supervisor(restart_backoff=0)
    mailbox = sup.add("fragile", lambda: Fragile(CooldownCore(1.0, 60.0, 0.0), lambda _: True), 4, 1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with pytest.raises(E.GatewayFailure):
                await mailbox.ask("x")
            while not any(r.getMessage() == "actor restarted" for r in caplog.records):
                await trio.sleep(0)
            nursery.cancel_scope.cancel()
    crashed, restarted = [r for r in caplog.records if r.name == "tollhouse.actors"]
    assert (crashed.getMessage(), crashed.actor, crashed.restarts, crashed.levelname) == (
        "actor crashed", "fragile", 1, "ERROR")
    assert "boom" in crashed.error and crashed.exc_info is not None
    assert (restarted.getMessage(), restarted.actor, restarted.restarts) == ("actor restarted", "fragile", 1)


def test_a_json_line_is_ascii_and_compact_whatever_its_values():
    from gateway.logs import json_line
    plain = json_line(None, "info", {"event": "request", "model": "demo", "n": 1})
    assert plain == '{"event":"request","model":"demo","n":1}'
    # text past ASCII is escaped (a stream of any encoding can take the line)
    accented = json_line(None, "info", {"model": "modèle-日本"})
    assert accented.isascii() and json.loads(accented) == {"model": "modèle-日本"}
    # what orjson refuses, the standard library writes, in the same shape
    big = json_line(None, "info", {"tokens": 2**70, 3: "int key"})
    assert json.loads(big) == {"tokens": 2**70, "3": "int key"} and ", " not in big
    # a value JSON has no form for is its repr (or its ``__structlog__``)
    class Own:
        def __structlog__(self):
            return "own form"
    assert json.loads(json_line(None, "info", {"a": object, "b": Own()})) == {"a": repr(object), "b": "own form"}


class _Stream:
    """A stream that records each write (one write: one system call for a real one)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


async def test_access_lines_are_held_briefly_and_keep_their_place_among_the_others(autojump_clock):
    from gateway.logs import HOLD_S, HELD_LOGGER, LineOutput, NamedWriter
    stream = _Stream()
    output = LineOutput(stream)
    access, other = NamedWriter(output, HELD_LOGGER), NamedWriter(output, "tollhouse")
    access.info("a1")
    access.info("a2")
    assert stream.writes == [], "held"
    other.warning("w")
    assert stream.writes == ["a1\na2\nw\n"], "written behind what was held, in one write"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.write_held)
        access.info("a3")
        await trio.sleep(HOLD_S / 2)
        assert stream.writes[1:] == []
        await trio.sleep(HOLD_S)
        assert stream.writes[1:] == ["a3\n"], "written within HOLD_S"
        nursery.cancel_scope.cancel()
    access.info("a4")
    output.flush()  # what a process's exit does
    assert stream.writes[2:] == ["a4\n"]


def test_many_held_lines_are_written_without_waiting():
    from gateway.logs import HOLD_MAX_BYTES, HELD_LOGGER, LineOutput, NamedWriter
    stream = _Stream()
    access = NamedWriter(LineOutput(stream), HELD_LOGGER)
    line = "x" * 1000
    for _ in range(HOLD_MAX_BYTES // 1000 + 1):
        access.info(line)
    assert len(stream.writes) == 1 and stream.writes[0].count("\n") == HOLD_MAX_BYTES // 1000 + 1


def test_a_process_that_exits_writes_its_held_access_lines():
    child = """
import sys
from gateway import logs
logs.configure("info", "json")
logs.logger("tollhouse.access").info("request", n=1)
logs.logger("tollhouse.access").info("request", n=2)
"""
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["n"] for line in done.stdout.splitlines()] == [1, 2]


async def test_a_stream_that_refuses_held_lines_does_not_stop_the_writer(autojump_clock, capsys):
    from gateway.logs import HOLD_S, HELD_LOGGER, LineOutput, NamedWriter

    class Broken(_Stream):
        def write(self, text: str) -> None:
            raise BrokenPipeError("stdout is gone")

    output = LineOutput(Broken())
    access = NamedWriter(output, HELD_LOGGER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(output.write_held)
        access.info("a1")
        await trio.sleep(HOLD_S * 1.5)
        access.info("a2")
        await trio.sleep(HOLD_S * 1.5)
        nursery.cancel_scope.cancel()  # still running: it was never stopped by the error
    assert capsys.readouterr().err.count("refused its held access lines") == 2
