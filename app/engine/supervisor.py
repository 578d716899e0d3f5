"""Keeps the engine running: watches it, records its state for /readyz, restarts it with backoff."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from app.engine.process import EngineProcess, EngineSpec, exit_reason, start_engine
from app.engine.report import EngineError, say

STATES = ("starting", "running", "restarting", "failed")


class StateFile:
    """The engine's state as JSON, which the gateway's /readyz reads: state, reason, pid, restarts, updated."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, state: str, reason: str, pid: int, restarts: int) -> None:
        """Replace the file in one step, so that a reader never sees half of it."""
        if state not in STATES:
            raise ValueError(f"unknown engine state {state!r}")
        record = {"state": state, "reason": reason, "pid": pid, "restarts": restarts, "updated": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(record) + "\n")
        os.replace(temporary, self.path)

    def read(self) -> dict[str, Any]:
        """The record last written."""
        record: dict[str, Any] = json.loads(self.path.read_text())
        return record

    def remove(self) -> None:
        """Forget the state (on a clean stop nobody is left to read it)."""
        self.path.unlink(missing_ok=True)


def first_line(error: BaseException) -> str:
    """The first line of an error's message: short enough for the state file and /readyz."""
    return (str(error).splitlines() or [type(error).__name__])[0]


class EngineSupervisor:
    """Starts the engine, then on each check() restarts it if it died or stopped answering /health.

    Restarts wait 1, 2, 4 ... (at most 60) seconds. After ENGINE_MAX_RESTARTS failed
    tries in a row it records "failed" and raises EngineError, so `sluice serve` stops
    everything. A run of STABLE_AFTER seconds starts the count again.
    """

    HEALTH_EVERY = 10.0
    HEALTH_TIMEOUT = 5.0
    HEALTH_FAILURES = 3  # in a row: a busy engine may miss one /health, a hung one misses them all
    STABLE_AFTER = 600.0
    MAX_BACKOFF = 60.0

    def __init__(self, spec: EngineSpec, log: Path, state: StateFile, max_restarts: int,
                 start_timeout: float) -> None:
        self.spec = spec
        self.log = log
        self.state = state
        self.max_restarts = max_restarts
        self.start_timeout = start_timeout
        self.engine: EngineProcess | None = None
        self.restarts = 0  # since `sluice serve` began: reported in the state file
        self._tries = 0  # failed tries in a row: bounded by max_restarts
        self._ready_at = 0.0
        self._next_health = 0.0
        self._missed_health = 0
        self.failed = False

    @property
    def pid(self) -> int:
        return self.engine.pid if self.engine is not None else 0

    def start(self) -> None:
        """The first start; raises EngineError (state "failed") if the engine does not come up."""
        self.state.write("starting", "the engine is loading the model", 0, 0)
        try:
            self._start_engine()
        except EngineError as exc:
            self.failed = True
            self.state.write("failed", first_line(exc), self.pid, self.restarts)
            raise

    def _start_engine(self) -> None:
        self.engine = None
        self.engine = start_engine(self.spec, self.log, self.start_timeout)
        self._ready_at = time.monotonic()
        self._next_health = self._ready_at + self.HEALTH_EVERY
        self._missed_health = 0
        self.state.write("running", "", self.pid, self.restarts)

    def check(self) -> None:
        """Look at the engine once (call it every second or so); restart it if needed (this blocks)."""
        engine = self.engine
        if engine is None:
            return
        if not engine.alive():
            self._recover(exit_reason(engine.child.returncode if engine.child else None))
            return
        if time.monotonic() < self._next_health:
            return
        self._next_health = time.monotonic() + self.HEALTH_EVERY
        if engine.healthy(self.HEALTH_TIMEOUT):
            self._missed_health = 0
            return
        self._missed_health += 1
        if self._missed_health >= self.HEALTH_FAILURES:
            self._recover(f"the engine stopped answering /health ({self._missed_health} checks in a row)")

    def _recover(self, reason: str) -> None:
        """Restart with backoff until the engine is ready again or the tries run out."""
        # Say why at once: stopping what is left of the old engine can take seconds.
        self.state.write("restarting", reason, self.pid, self.restarts)
        if self.engine is not None:
            self.engine.stop()  # ends the rest of a dead engine's process group, or a hung engine
        if time.monotonic() - self._ready_at >= self.STABLE_AFTER:
            self._tries = 0
        while True:
            self._tries += 1
            if self._tries > self.max_restarts:
                gave_up = (f"gave up after {self.max_restarts} restarts in a row" if self.max_restarts
                           else "not restarted (SLUICE_ENGINE_MAX_RESTARTS=0)")
                self.failed = True
                self.state.write("failed", f"{reason}; {gave_up}", self.pid, self.restarts)
                raise EngineError(f"{reason}; {gave_up}: stopping. See {self.log}")
            delay = min(2.0 ** (self._tries - 1), self.MAX_BACKOFF)
            say(f"{reason} (log: {self.log}); restarting it in {delay:.0f} s, "
                f"try {self._tries} of {self.max_restarts}")
            self.state.write("restarting", f"{reason}; restart {self._tries} of {self.max_restarts}", self.pid,
                             self.restarts)
            time.sleep(delay)
            self.restarts += 1
            try:
                self._start_engine()
                return
            except EngineError as exc:
                say(f"the restarted engine failed: {exc}")
                reason = f"the restarted engine failed: {first_line(exc)}"

    def stop(self) -> None:
        """Stop the engine; forget its state unless it failed (that record stays for a post-mortem)."""
        if self.engine is not None:
            self.engine.stop()
        if not self.failed:
            self.state.remove()
