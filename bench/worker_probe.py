"""What a gunicorn worker holds, seen from outside: open file descriptors, sockets, memory, greenlets.

File descriptors and memory come from /proc; greenlets from the worker itself, through the
test-only probe in bench/gunicorn_probe.conf.py (a signal, answered in a file).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the kernel here has no /proc/<pid>/task/*/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        # Fields after the command name, which is in parentheses and may contain spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def worker_pid(master_pid: int, timeout: float = 15) -> int:
    """The one worker of a gunicorn master started with a single worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = children(master_pid)
        if len(workers) == 1:
            return workers[0]
        time.sleep(0.05)
    raise TimeoutError(f"gunicorn master {master_pid} has no single worker")


def open_fds(pid: int) -> list[str]:
    """What each open file descriptor of `pid` points to (`socket:[123]`, `pipe:[4]`, a path...)."""
    fd_dir = f"/proc/{pid}/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            continue  # closed while we looked
    return targets


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def live_greenlets(pid: int, probe_dir: Path, timeout: float = 10) -> int:
    """Greenlets alive in a worker started with the probe config: ask it by signal, read its answer."""
    answer = probe_dir / str(pid)
    answer.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not answer.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {pid} did not answer the greenlet probe")
        time.sleep(0.02)
    return int(answer.read_text())


@dataclass(frozen=True)
class Holdings:
    """What a worker holds at one moment."""

    fds: int
    sockets: int
    greenlets: int

    def within(self, other: Holdings) -> bool:
        """True when this holds no more of anything than `other`."""
        return self.fds <= other.fds and self.sockets <= other.sockets and self.greenlets <= other.greenlets


def holdings(pid: int, probe_dir: Path) -> Holdings:
    """The worker's open fds, sockets among them, and live greenlets."""
    targets = open_fds(pid)
    return Holdings(fds=len(targets), sockets=sum(t.startswith("socket:") for t in targets),
                    greenlets=live_greenlets(pid, probe_dir))


def settled_holdings(pid: int, probe_dir: Path, timeout: float = 10) -> Holdings:
    """The worker's holdings once they stop changing (closed connections take a moment to unwind)."""
    deadline = time.monotonic() + timeout
    seen = [holdings(pid, probe_dir)]
    while len(seen) < 3 or len(set(seen[-3:])) > 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {pid} holdings keep changing: {seen[-3:]}")
        time.sleep(0.1)
        seen.append(holdings(pid, probe_dir))
    return seen[-1]
