"""A private Postgres for the tests: one server per test session, one database per test.

The server is initialised into a temporary directory and listens on an ephemeral
loopback port (its unix socket stays in that directory), with ``fsync`` off: the tests
need a real Postgres, not a durable one. ``initdb`` refuses to run as root, so as root
the binaries run as the ``postgres`` user (``runuser``), the directory owned by it.
Without the binaries the tests that need them are skipped with the reason, unless the
``CI`` environment variable is set: there a missing Postgres is a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

START_TIMEOUT_S = 60.0


def binaries() -> Path | None:
    """The newest installed Postgres's bin directory (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; ``database()`` makes a fresh database and returns its DSN."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tollhouse-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, **kwargs)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
                         "--no-sync", timeout=START_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        for _ in range(5):  # a port taken between picking it and binding it: pick another
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                             "-w", "-t", str(int(START_TIMEOUT_S)), "start", timeout=START_TIMEOUT_S + 10)
            if done.returncode == 0:
                return
        log = (self.root / "log").read_text(errors="replace")[-2000:] if (self.root / "log").exists() else ""
        raise RuntimeError(f"postgres did not start: {done.stderr[-1000:]} {log}")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    def database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=START_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)


def missing(reason: str) -> None:
    """Skip the test for want of Postgres; in CI, fail it instead."""
    if os.environ.get("CI"):
        pytest.fail(f"Postgres is needed in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server():
    bin_dir = binaries()
    if bin_dir is None:
        missing("no Postgres binaries (initdb) found; install Debian's postgresql")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing("running as root needs runuser to start Postgres as the postgres user")
    server = PostgresServer(bin_dir)
    began = time.monotonic()
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    assert time.monotonic() - began < START_TIMEOUT_S * 2
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.database()
