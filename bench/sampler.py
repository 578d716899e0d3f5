"""Resident memory and CPU time of the processes under test (each with all its children)."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import psutil


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (gunicorn's master and workers, nginx's master and workers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process tree to `cpus` (what `taskset -a -p` does, for the whole tree)."""
    for process in tree(pid):
        try:
            for thread in process.threads():
                os.sched_setaffinity(thread.id, cpus)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue  # exited meanwhile (a worker being replaced): nothing left to pin


def measure(pids: list[int], descendants: bool = True) -> tuple[int, float]:
    """(resident bytes, user + system CPU seconds) summed over `pids` (with their descendants)."""
    rss, cpu = 0, 0.0
    for pid in pids:
        for process in tree(pid) if descendants else [psutil.Process(pid)]:
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu += times.user + times.system
    return rss, cpu


@dataclass
class Usage:
    """What the processes used during one measured phase."""

    rss_before: int  # bytes, when the phase started
    rss_peak: int  # bytes, highest sample during the phase
    cpu_seconds: float  # user + system, during the phase


class Sampler:
    """Samples the trees every `interval` seconds on the running loop between start() and stop()."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self.pids = pids
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._rss_before = self._rss_peak = 0
        self._cpu_before = 0.0

    def start(self) -> None:
        """Take the starting point and begin sampling."""
        self._rss_before, self._cpu_before = measure(self.pids)
        self._rss_peak = self._rss_before
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._rss_peak = max(self._rss_peak, measure(self.pids)[0])

    async def stop(self) -> Usage:
        """Stop sampling; what was used since start()."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        rss, cpu = measure(self.pids)
        return Usage(self._rss_before, max(self._rss_peak, rss), cpu - self._cpu_before)
