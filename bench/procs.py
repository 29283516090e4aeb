"""Child processes of a bench run: pinned to a core, in their own process group, paused
between measurements, and ended by their own id when the run ends.

A gateway that is not being measured is frozen with SIGSTOP so its timers and
background tasks cannot take CPU from the one that is; SIGCONT wakes it for its turn.
Memory is the resident set of the whole process group (nginx's workers, any helper a
peer forks), read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

GATEWAY_CORE = 0
LOAD_CORE = 1


# read once, before the run pins itself to the load core: pinning must not hide the others
_USABLE_CORES = len(os.sched_getaffinity(0))


def cores() -> int:
    return _USABLE_CORES


class Proc:
    def __init__(self, name: str, argv: list[str], *, cwd: str | Path, env: dict | None = None,
                 log: Path, core: int | str | None) -> None:
        self.name = name
        self.argv = argv
        self.cwd = str(cwd)
        self.env = env
        self.log = log
        self.core = core
        self.popen: subprocess.Popen | None = None
        self.paused = False

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        argv = list(self.argv)
        if self.core is not None and cores() > 1:
            argv = ["taskset", "-c", str(self.core)] + argv
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def pause(self) -> None:
        if self.alive() and not self.paused:
            self._signal_group(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._signal_group(signal.SIGCONT)
            self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        self.resume()
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(5)
        # anything the leader left behind in its group
        for pid in group_pids(self.popen.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def rss_kb(self) -> int | None:
        if not self.alive():
            return None
        return sum(rss_kb(pid) or 0 for pid in group_pids(self.pid))

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def affinity(pid: int) -> list[int] | None:
    """The cores ``pid`` may run on, as the kernel says (``Cpus_allowed_list``); None once
    it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return parse_cpu_list(line.split(":", 1)[1])
    except OSError:
        return None
    return None


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


class Pinning:
    """Which cores each process of the run was meant to have, and which it had.

    Each process is recorded once it runs (a ``taskset`` child only after its exec):
    every pid of its process group, read from /proc. ``report()`` is what the result's
    ``machine.pinning`` says; a process on other cores than meant is listed there and in
    the run's notes, so a figure measured unpinned cannot pass for a pinned one."""

    def __init__(self) -> None:
        self.enabled = cores() > 1
        self.processes: dict[str, dict] = {}

    def record(self, name: str, intended: int | str | None, pids: list[int]) -> None:
        seen = {str(pid): cpus for pid in pids if (cpus := affinity(pid)) is not None}
        meant = None if intended is None else parse_cpu_list(str(intended))
        entry = self.processes.setdefault(name, {"intended": meant, "observed": {}})
        for pid, cpus in seen.items():
            if len(entry["observed"]) < 12 or pid in entry["observed"]:  # wrk: a new pid per run
                entry["observed"][pid] = cpus

    def mismatches(self) -> list[str]:
        if not self.enabled:
            return []  # nothing was pinned: nothing to hold it to
        bad = []
        for name, entry in self.processes.items():
            if entry["intended"] is None:
                continue
            wrong = {pid: cpus for pid, cpus in entry["observed"].items() if cpus != entry["intended"]}
            if wrong or not entry["observed"]:
                bad.append(f"{name}: meant for cores {entry['intended']}, "
                           f"had {wrong or 'no process to read'}")
        return bad

    def report(self) -> dict | str:
        if not self.enabled:
            return f"none ({cores()} usable core)"
        bad = self.mismatches()
        return {"cores_usable_at_start": cores(), "gateway_core": GATEWAY_CORE, "load_core": LOAD_CORE,
                "how": "gateways (each arm under test) by taskset on the gateway core; the mock, wrk, py-spy "
                       "and this process (the Python load client) on the load core",
                "checked": not bad, "mismatches": bad, "processes": self.processes}


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may contain spaces and parentheses: fields start after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_port(port: int, timeout: float, proc: Proc | None = None) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CpuMonitor:
    """How much CPU the rest of the machine takes while the bench runs.

    Other work on a 2-core machine (a test suite, another bench) skews every figure,
    so the bench samples it: all busy CPU time from /proc/stat minus the time of this
    process and its descendants (live ones from /proc, reaped ones via cutime/cstime)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.samples: list[tuple[float, float, float]] = []  # (time, foreign cores, steal cores)
        self._last: tuple[float, int, int, int] | None = None

    @staticmethod
    def _stat_fields(pid: int) -> list[bytes] | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return None
        return stat[stat.rfind(b")") + 2:].split()

    def _ours(self) -> int:
        me = os.getpid()
        parents: dict[int, int] = {}
        times: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            f = self._stat_fields(pid)
            if f is None or len(f) < 15:
                continue
            parents[pid] = int(f[1])
            t = int(f[11]) + int(f[12])  # utime + stime
            if pid == me:
                t += int(f[13]) + int(f[14])  # + reaped children
            times[pid] = t
        total = 0
        for pid, t in times.items():
            p, hops = pid, 0
            while p and p != me and hops < 64:
                p, hops = parents.get(p, 0), hops + 1
            if p == me:
                total += t
        return total

    @staticmethod
    def _machine() -> tuple[int, int]:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
        v = [int(x) for x in parts]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
        return user + nice + system + irq + softirq, steal

    def sample(self) -> None:
        now = time.monotonic()
        busy, steal = self._machine()
        ours = self._ours()
        if self._last is not None:
            t0, b0, s0, o0 = self._last
            dt = (now - t0) * self.hz
            if dt > 0:
                foreign = max(0.0, ((busy - b0) - (ours - o0)) / dt)
                self.samples.append((now, foreign, max(0.0, (steal - s0) / dt)))
        self._last = (now, busy, steal, ours)

    def between(self, t0: float, t1: float) -> dict | None:
        xs = [s for s in self.samples if t0 <= s[0] <= t1]
        if not xs:
            return None
        return {"foreign_cores_mean": round(sum(s[1] for s in xs) / len(xs), 3),
                "foreign_cores_max": round(max(s[1] for s in xs), 3),
                "steal_cores_mean": round(sum(s[2] for s in xs) / len(xs), 3)}
