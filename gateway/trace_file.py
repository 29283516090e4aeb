"""Transform trace lines on disk: ``<state_dir>/traces/YYYY-MM-DD.jsonl`` (UTC), one
JSON line per traced request, written off the event loop.

``submit`` never waits: a line goes into a bounded queue (a full queue drops it and
counts it), and one task hands what is queued to a worker thread of its own
(``CapacityLimiter(1)``), which redacts each line with the gateway's ``Redactor``
and appends it to the day's file -- unless the file would pass ``max_file_bytes``,
in which case the line is dropped and counted. ``find`` reads today's file and those
of the ``search_days - 1`` days before (each bounded by the cap), in a thread too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import trio

from protocols.redact import Redactor

QUEUE_LINES = 256

log = logging.getLogger("tollhouse.traces")


@attrs.define
class TraceFileStats:
    """What became of the lines handed to the trace file."""

    written: int = 0
    dropped_file_cap: int = 0  # the day's file was full
    dropped_queue_full: int = 0  # the writer could not keep up
    dropped_write_error: int = 0  # the file could not be written

    def view(self) -> dict:
        return attrs.asdict(self)


def day_file(directory: Path, when: float) -> Path:
    return directory / time.strftime("%Y-%m-%d.jsonl", time.gmtime(when))


class TraceFile:
    def __init__(self, state_dir: str, max_file_bytes: int, search_days: int,
                 redactor: Callable[[], Redactor], siblings: Path | None = None) -> None:
        self.directory = Path(state_dir) / "traces"
        # a worker of ``--workers N`` also reads its siblings' files (``<siblings>/*/traces``),
        # so a request's trace is found whichever worker served it
        self.siblings = siblings
        self.max_file_bytes = max_file_bytes
        self.search_days = search_days
        self.redactor = redactor
        self.stats = TraceFileStats()
        self._send, self._receive = trio.open_memory_channel[str](QUEUE_LINES)
        self._limiter = trio.CapacityLimiter(1)
        self._submitted = 0
        self._handled = 0
        self._progress = trio.Event()

    def submit(self, line: str) -> None:
        try:
            self._send.send_nowait(line)
        except trio.WouldBlock:
            self.stats.dropped_queue_full += 1
            return
        self._submitted += 1

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is submitted, in batches, until cancelled."""
        task_status.started()
        while True:
            lines = [await self._receive.receive()]
            while True:
                try:
                    lines.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await trio.to_thread.run_sync(self._append, lines, self.redactor(), limiter=self._limiter)
            except OSError as exc:  # a full or unwritable disk loses traces, never the gateway
                self.stats.dropped_write_error += len(lines)
                log.error("transform traces could not be written to %s (%s)", self.directory, exc.strerror or exc)
            finally:
                self._handled += len(lines)
                self._progress.set()
                self._progress = trio.Event()

    async def flush(self) -> None:
        """Return once every line submitted before the call has been written (or dropped)."""
        wanted = self._submitted
        while self._handled < wanted:
            await self._progress.wait()

    def _append(self, lines: list[str], redactor: Redactor) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = day_file(self.directory, time.time())
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        out = []
        for line in lines:
            data = (redactor.text(line) + "\n").encode("utf-8", "replace")
            if size + len(data) > self.max_file_bytes:
                self.stats.dropped_file_cap += 1
                continue
            size += len(data)
            out.append(data)
        if out:
            with open(path, "ab") as f:
                f.write(b"".join(out))
            self.stats.written += len(out)

    async def find(self, request_id: str) -> dict | None:
        return await trio.to_thread.run_sync(self._find, request_id, limiter=self._limiter)

    def _find(self, request_id: str) -> dict | None:
        prefix = ('{"request_id": ' + json.dumps(request_id) + ",").encode()
        now = time.time()
        for days in range(self.search_days):
            for path in self._day_files(now - days * 86400):
                found = _find_in(path, prefix)
                if found is not None:
                    return found
        return None

    def _day_files(self, when: float) -> list[Path]:
        """That day's file here, then the siblings' (their directories read at each search)."""
        paths = [day_file(self.directory, when)]
        if self.siblings is not None:
            try:
                others = sorted(d / "traces" for d in self.siblings.iterdir() if d / "traces" != self.directory)
            except OSError:
                others = []
            paths += [day_file(d, when) for d in others]
        return paths

    def files(self) -> list[str]:
        """The trace files there are, newest first (names only)."""
        try:
            return sorted((p.name for p in self.directory.glob("*.jsonl")), reverse=True)
        except OSError:
            return []


def _find_in(path: Path, prefix: bytes) -> dict | None:
    """The first line of ``path`` that starts with ``prefix`` (a line a sibling is still
    writing is not one yet)."""
    try:
        f = open(path, "rb")
    except OSError:  # no traces that day (or none readable)
        return None
    with f:
        for line in f:
            if line.startswith(prefix) and line.endswith(b"\n"):
                return json.loads(line)
    return None


def is_request_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "_-" for c in value)
