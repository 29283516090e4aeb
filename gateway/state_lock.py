"""One gateway per ``state_dir``: an exclusive OS lock held for the process's life.

Two gateways on one state directory would each believe they own its ledger: the
second would settle the first one's in-flight holds as ``recovered`` at its start, and
the first one's own settlements would then land on reservations that no longer exist.
Until state is shared properly (the Postgres backend), a state directory has exactly
one owner, and a second gateway refuses to start, saying who the owner is.

The lock is ``flock(2)`` on ``<state_dir>/gateway.lock``: the kernel releases it when
the holder's file is closed, which includes every way a process can die (SIGKILL, an
OOM kill, a crash). So the pid written inside is only a description of the holder for
the refusal message, never evidence that the directory is taken: a stale pid left by a
killed process blocks nothing. The file is never deleted (deleting a lock file races
with a process that has just opened it); a clean release empties it.

``flock`` locks belong to an open file, not to a process, so two gateways in one
process (the test suite does this) contend for the lock just as two processes do.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import attrs

LOCK_FILE = "gateway.lock"


@attrs.frozen
class Holder:
    """Who holds a state directory, as the holder wrote it when it took the lock."""

    pid: int | None
    started: str | None  # ISO-8601, UTC

    def describe(self) -> str:
        if self.pid is None:
            return "a process that has not written its pid yet"
        return f"pid {self.pid}, started {self.started or 'at an unknown time'}"


class StateDirBusy(Exception):
    """Another live gateway owns this state directory: this one must not start."""

    def __init__(self, state_dir: Path, holder: Holder) -> None:
        self.state_dir = state_dir
        self.holder = holder
        super().__init__(
            f"state_dir {state_dir} is in use by another tollhouse gateway ({holder.describe()}); "
            f"stop that one first, or give this one its own state_dir")


class StateDirLock:
    """The held lock on one state directory; ``release`` (or leaving ``with``) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str | Path) -> StateDirLock:
        """Take the lock without waiting, or raise ``StateDirBusy`` naming the holder."""
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirBusy(directory.resolve(), holder) from None
        except BaseException:
            os.close(fd)
            raise
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": started}).encode() + b"\n", 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Empty the file (so no pid outlives its owner) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases the flock

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> Holder:
    """The holder's own description; a file mid-write or from an older format says less."""
    try:
        doc = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Holder(None, None)
    pid, started = doc.get("pid"), doc.get("started")
    return Holder(pid if isinstance(pid, int) else None, started if isinstance(started, str) else None)
