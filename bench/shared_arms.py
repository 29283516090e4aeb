"""The shared-backend arms: Tollhouse on Postgres and Redis, one worker and two.

``tollhouse-shared`` is the ``tollhouse`` arm's config with ``"state": {"backend":
"shared"}``: what shared state costs a request (added latency, requests/s on one
core). ``tollhouse-shared-2w`` is the same with ``--workers 2``, given both cores (the
load generator's too: this machine has no third), which is what a second worker gains.

The bench starts its own Postgres and Redis in temporary directories on ephemeral
loopback ports (``BackendServers``), once per run, on the load core like the mock:
they stand for servers on other machines. Postgres runs with ``fsync`` on and
``synchronous_commit=off`` (as the local arm's SQLite runs WAL with
``synchronous=NORMAL``: a crash of the database server may lose the last commits, never
corrupt them); each arm gets a database of its own. As root, Postgres's binaries run as
the ``postgres`` user (``runuser``), since ``initdb`` refuses root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.arms import Tollhouse, Unavailable
from bench.procs import GATEWAY_CORE, LOAD_CORE, free_port

START_TIMEOUT_S = 60.0


class BackendServers:
    """A private Postgres and Redis for the run; ``stop()`` removes everything."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tollhouse-bench-state-"))
        self.pg_port = 0
        self.redis_port = 0
        self.redis: subprocess.Popen | None = None
        self._pg_bin: Path | None = None
        self._databases = 0
        self._as_root = os.geteuid() == 0

    def start(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
        redis = shutil.which("redis-server")
        if not found or redis is None:
            raise Unavailable("not_installed", "the shared arms need Postgres (initdb) and redis-server: "
                                               "Debian's postgresql and redis-server")
        self._pg_bin = Path(found[-1]).parent
        data = self.root / "pg"
        data.mkdir()
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        done = self._pg("initdb", "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise Unavailable("failed", f"initdb failed: {done.stderr[-500:]}")
        self.pg_port = free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.pg_port} -c unix_socket_directories={self.root} "
                   "-c synchronous_commit=off -c max_connections=100")
        done = self._pg("pg_ctl", "-D", str(data), "-l", str(self.root / "pg.log"), "-o", options, "-w",
                        "-t", str(int(START_TIMEOUT_S)), "start")
        if done.returncode != 0:
            raise Unavailable("failed", f"postgres did not start: {done.stderr[-500:]}")
        self.redis_port = free_port()
        argv = [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.root), "--protected-mode", "no"]
        self.redis = subprocess.Popen(["taskset", "-c", str(LOAD_CORE), *argv], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _pong(self.redis_port):
            if time.monotonic() > deadline or self.redis.poll() is not None:
                raise Unavailable("failed", "redis-server did not answer PING")
            time.sleep(0.05)
        self._pin_postgres()

    def _pg(self, *argv: str) -> subprocess.CompletedProcess:
        assert self._pg_bin is not None
        command = [str(self._pg_bin / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S + 10)

    def _pin_postgres(self) -> None:
        """Postgres and its backends (forked later: they inherit it) on the load core."""
        pid_file = self.root / "pg" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.sched_setaffinity(pid, {LOAD_CORE})
        except (OSError, ValueError, IndexError):
            pass  # one core, or no such process: measured unpinned

    def database(self) -> str:
        """A fresh database's DSN (each arm its own)."""
        import psycopg

        self._databases += 1
        name = f"bench{self._databases}"
        base = f"host=127.0.0.1 port={self.pg_port} user=postgres connect_timeout=10"
        with psycopg.connect(f"{base} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{base} dbname={name}"

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
        if self._pg_bin is not None and (self.root / "pg" / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.root / "pg"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class TollhouseShared(Tollhouse):
    """``tollhouse serve`` on the shared backend, one process."""

    name = "tollhouse-shared"
    workers = 1
    startup_timeout = 60.0
    servers: BackendServers | None = None  # set by the run before the gateway starts
    _redis_db = 1

    def check_installed(self):
        super().check_installed()
        if self.servers is None:
            raise Unavailable("not_installed", "the bench's Postgres and Redis did not start")

    def config(self) -> dict:
        doc = super().config()
        assert self.servers is not None
        if not hasattr(self, "_dsn"):  # one database per arm, kept across its restarts
            self._dsn = self.servers.database()
        doc["state"] = {"backend": "shared", "postgres": {"dsn": self._dsn},
                        "redis": {"url": self.servers.redis_url(self._redis_db)}}
        if self.workers > 1:
            doc["metrics"] = {"port": 0}  # each worker its own scrape (the main port's /metrics is refused)
        return doc

    def command(self):
        argv, env = super().command()
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        return argv, env


class TollhouseShared2(TollhouseShared):
    """The same with ``--workers 2`` on both cores."""

    name = "tollhouse-shared-2w"
    workers = 2
    core = f"{GATEWAY_CORE},{LOAD_CORE}"
    _redis_db = 2


SHARED = {cls.name: cls for cls in (TollhouseShared, TollhouseShared2)}
