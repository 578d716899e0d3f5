"""What the person running `sluice serve` reads: progress lines, waits with elapsed time, failures."""
from __future__ import annotations

import sys
import time
from pathlib import Path


class EngineError(RuntimeError):
    """A step of the embedded engine failed; the message says what failed and what to do."""


def _write(text: str) -> None:
    # A closed terminal or a `| tee` ended by Ctrl-C must not interrupt a shutdown in progress.
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def say(message: str) -> None:
    """Print one progress line (on stderr, where gunicorn logs too, so the two interleave in order)."""
    _write(f"sluice: {message}\n")


def tail(path: Path, lines: int = 25, start: int = 0) -> str:
    """The last lines of a log file from byte offset start on, indented, or a note that it is empty."""
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "    (no log written)"
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept) or "    (log is empty)"


class Waiting:
    """A wait shown with its elapsed seconds: rewritten in place on a terminal, a line every 15 s in a log."""

    EVERY = 15.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.monotonic()
        try:
            self._interactive = sys.stderr.isatty()
        except (OSError, ValueError):
            self._interactive = False
        self._last_line = 0.0
        self._dirty = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self) -> None:
        """Show the elapsed time now (cheap: call it on every poll)."""
        elapsed = self.elapsed
        if elapsed < 1.0:  # a short wait needs no line (and would interleave with the child's output)
            return
        if self._interactive:
            _write(f"\rsluice: waiting for {self.what}: {elapsed:.0f} s ")
            self._dirty = True
        elif elapsed - self._last_line >= self.EVERY:
            self._last_line = elapsed
            say(f"waiting for {self.what}: {elapsed:.0f} s")

    def end(self) -> None:
        """Leave the rewritten line so the next message starts on a line of its own."""
        if self._dirty:
            _write("\n")
            self._dirty = False
