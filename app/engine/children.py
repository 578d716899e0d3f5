"""Long-lived child processes (the engine, gunicorn), each in its own process group."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from app.engine.report import say

_PR_SET_PDEATHSIG = 1
_prctl: Callable[[int, int], int] | None
try:
    # Looked up here, not in the child: between fork and exec the child should only make the call.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the orderly stop below is all there is
    _prctl = None


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when `sluice serve` dies, even by SIGKILL (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None,
          output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start a child as the leader of a new process group (a new session).

    A terminal's Ctrl-C then reaches only `sluice serve`, which stops its children in order
    (gateway first, engine last), and killing the group also reaches the child's own
    children (vLLM's engine core, gunicorn's workers). Should `sluice serve` itself be
    killed, the child gets SIGTERM from the kernel rather than being orphaned.
    """
    return subprocess.Popen(
        list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=output, stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True, preexec_fn=_die_with_parent,
    )


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _group_gone(pgid: int) -> bool:
    """True when no live process is left in the group."""
    if os.path.isdir("/proc/self"):
        return not _group_members(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group(pgid: int, deadline: float) -> bool:
    """Wait until the group has no live process or the deadline passes; True if it emptied."""
    while time.monotonic() < deadline:
        if _group_gone(pgid):
            return True
        time.sleep(0.1)
    return _group_gone(pgid)


def stop(child: subprocess.Popen[bytes], name: str, grace: float) -> int | None:
    """Stop a child and everything in its process group: TERM, wait up to grace seconds, then KILL.

    TERM goes to the leader first, so that it shuts its own children down in its own order
    (gunicorn lets workers finish their requests; vLLM stops its engine core); whatever
    is left in the group after that gets TERM, then KILL. A second Ctrl-C (or TERM) during
    the wait skips the rest of the grace period. Safe to call again. Returns the leader's
    exit code.
    """
    pgid = child.pid  # start_new_session: the leader's pid is the group id
    if child.poll() is None:
        deadline = time.monotonic() + grace
        try:
            say(f"stopping {name} (waits up to {grace:.0f} s; Ctrl-C again to stop at once)")
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {grace:.0f} s: killing it")
            _signal_group(pgid, signal.SIGTERM)
            if not _wait_group(pgid, max(deadline, time.monotonic() + 2.0)):
                say(f"{name}: killing the processes it left behind")
        except KeyboardInterrupt:
            say(f"{name}: stopping at once")
    # Whatever is left now (or was left by a leader that died on its own) has nothing to finish.
    _signal_group(pgid, signal.SIGKILL)
    child.wait()
    _wait_group(pgid, time.monotonic() + 5.0)
    return child.returncode
