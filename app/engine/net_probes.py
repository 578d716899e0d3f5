"""Small network probes: is a port free, does a URL answer 200, wait until it does."""
from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable

from app.engine.report import EngineError, Waiting

# Loopback probes must not go through an HTTP proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so a child can bind it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when GET url returns 200."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return False


def wait_until_answers(url: str, what: str, timeout: float, alive: Callable[[], bool],
                       died: Callable[[], EngineError]) -> float:
    """Poll url until it answers 200, showing the elapsed seconds; returns them.

    Raises died() as soon as alive() turns false, and EngineError after timeout seconds.
    """
    waiting = Waiting(what)
    try:
        while True:
            if answers(url):
                return waiting.elapsed
            if not alive():
                raise died()
            if waiting.elapsed > timeout:
                raise EngineError(f"{what} did not answer {url} within {timeout:.0f} s")
            waiting.tick()
            time.sleep(0.5)
    finally:
        waiting.end()
