"""``tollhouse serve`` as a real child process, watched through its own output.

The gateway logs a line when it listens (with the bound address: the tests pass
``--port 0``), when a stop begins and when it ends; a test waits for those lines
rather than polling or sleeping. Its stdout is JSON lines (it is not a terminal):
``events`` holds each parsed line, and ``line(prefix)`` matches an event's text.
Every wait here is bounded by the caller's ``trio.fail_after``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

LISTENING = "tollhouse listening on "
STOPPING = "tollhouse stopping ("
STOPPED = "tollhouse stopped: "


class GatewayExited(Exception):
    """The process ended before printing the line a test waited for."""


class GatewayProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.events: list[dict] = []  # stdout's JSON lines, parsed
        self._changed = trio.Event()
        self._open_streams = 2

    @property
    def pid(self) -> int:
        return self.process.pid

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        return await self.process.wait()

    async def line(self, prefix: str) -> str:
        """The first stdout line (or logged event's text) starting with ``prefix``, once
        the process prints it."""
        while True:
            for line in self.stdout:
                if line.startswith(prefix):
                    return line
            for event in self.events:
                text = event.get("event")
                if isinstance(text, str) and text.startswith(prefix):
                    return text
            if self._open_streams == 0:
                raise GatewayExited(f"no line {prefix!r}; stdout {self.stdout!r}; stderr {self.stderr[-20:]!r}")
            await self._changed.wait()

    async def stderr_line(self, text: str) -> str:
        """The first stderr line containing ``text`` (logged errors), once it is written."""
        while True:
            for line in self.stderr:
                if text in line:
                    return line
            if self._open_streams == 0:
                raise GatewayExited(f"no stderr line with {text!r}; stderr {self.stderr[-20:]!r}")
            await self._changed.wait()

    async def event(self, name: str, **match) -> dict:
        """The first logged event called ``name`` whose fields include ``match``."""
        while True:
            for event in self.events:
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            if self._open_streams == 0:
                raise GatewayExited(f"no event {name!r} {match!r}; stdout {self.stdout[-20:]!r}")
            await self._changed.wait()

    async def url(self) -> str:
        return (await self.line(LISTENING))[len(LISTENING):].split()[0]

    async def until_exit(self) -> None:
        """Wait until the process has exited and its output has been read to the end."""
        await self.process.wait()
        while self._open_streams:
            await self._changed.wait()

    async def _read(self, stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
        buffer = b""
        try:
            async for chunk in stream:
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for part in complete:
                    self._add(lines, part.decode())
                self._notify()
            if buffer:
                self._add(lines, buffer.decode())
        finally:
            self._open_streams -= 1
            self._notify()

    def _add(self, lines: list[str], line: str) -> None:
        lines.append(line)
        if lines is self.stdout and line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                return
            if isinstance(event, dict):
                self.events.append(event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def write_config(tmp_path: Path, doc: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@asynccontextmanager
async def serve_process(config_path: Path, *args: str) -> AsyncIterator[GatewayProcess]:
    """Run ``tollhouse serve --port 0`` (and ``args``); killed on the way out if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gateway = GatewayProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gateway._read, process.stdout, gateway.stdout)
            nursery.start_soon(gateway._read, process.stderr, gateway.stderr)
            try:
                yield gateway
            finally:
                if process.returncode is None:
                    process.kill()
    finally:
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
