"""``tollhouse serve`` as a real child process, watched through its own output.

The gateway prints a line when it listens (with the bound address: the tests pass
``--port 0``), when a stop begins and when it ends; a test waits for those lines
rather than polling or sleeping. Every wait here is bounded by the caller's
``trio.fail_after``.
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
        """The first stdout line starting with ``prefix``, once the process prints it."""
        while True:
            for line in self.stdout:
                if line.startswith(prefix):
                    return line
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
                lines.extend(part.decode() for part in complete)
                self._notify()
            if buffer:
                lines.append(buffer.decode())
        finally:
            self._open_streams -= 1
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def write_config(tmp_path: Path, doc: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@asynccontextmanager
async def serve_process(config_path: Path) -> AsyncIterator[GatewayProcess]:
    """Run ``tollhouse serve --port 0``; killed on the way out if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", "0"],
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
