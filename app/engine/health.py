"""Small network probes: is a port free, does a URL answer, wait until it does."""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Callable

from app.engine.report import EngineError, Waiting


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so a child can bind it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


# Loopback probes must not go through an HTTP proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answers(url: str, timeout: float = 2.0, any_status: bool = False) -> bool:
    """True when GET url returns 200 (or, with any_status, any HTTP response at all)."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return response.status == 200 or any_status
    except urllib.error.HTTPError:
        return any_status
    except (OSError, ValueError):
        return False


def wait_until_answers(url: str, what: str, timeout: float, alive: Callable[[], bool],
                       died: Callable[[], EngineError], any_status: bool = False) -> float:
    """Poll url until it answers, showing the elapsed seconds; returns them.

    Raises died() as soon as alive() turns false, and EngineError after timeout seconds.
    """
    waiting = Waiting(what)
    try:
        while True:
            if answers(url, timeout=2.0, any_status=any_status):
                return waiting.elapsed
            if not alive():
                raise died()
            if waiting.elapsed > timeout:
                raise EngineError(f"{what} did not answer {url} within {timeout:.0f} s")
            waiting.tick()
            time.sleep(0.5)
    finally:
        waiting.end()
