"""A private ``redis-server`` for the test session: ephemeral port, temporary directory,
nothing persisted (``--save '' --appendonly no``).

One server serves the whole session (``redis_server`` fixture); each test gets it
emptied (``redis_url``), so no test sees another's windows, leases or rests. The
restart test stops it and starts it again on the same port (``stop()``, ``start()``),
which is what an operator's Redis restart looks like to a gateway. Without the binary
the tests that need it are skipped with that reason -- unless ``CI`` is set, where a
missing server is a failure (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

BINARY = "redis-server"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` child process on loopback."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and return once it answers PING."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str, password: str | None = None) -> bytes:
        """One inline command, its raw reply (test setup: emptying the server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                assert sock.recv(64).startswith(b"+OK")
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(4096)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def find_binary() -> str | None:
    return shutil.which(BINARY) or next((p for p in ("/usr/bin/redis-server",) if os.path.exists(p)), None)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI needs it: .ci/run installs Debian's redis-server)")
        pytest.skip("redis-server is not installed: the shared-backend Redis tests need it")
    with tempfile.TemporaryDirectory(prefix="tollhouse-redis-") as directory:
        server = RedisServer(binary, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's server, running and empty."""
    if redis_server.process is None:
        redis_server.start()
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url
