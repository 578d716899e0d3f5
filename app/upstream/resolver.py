"""Addresses for the worker's new connections, without a thread hand-off when the host is an address.

gevent's default resolver runs every getaddrinfo() in its thread pool, so that a DNS query
cannot block the worker. A replica, Redis or PostgreSQL named by its IP address (the usual
set-up: SLUICE_UPSTREAM_URL=http://10.0.0.5:8000) needs no query, yet each new connection
paid a hand-off to a thread and back, and a burst of new streams queued for the pool's
threads (the 2,000-stream run opened 2,000 upstream connections that way). An address is
converted in the worker (getaddrinfo with AI_NUMERICHOST never touches the network); a
name still goes to the thread pool.
"""
from __future__ import annotations

import _socket  # the C module under the socket module gevent patched
from typing import Any

from gevent import get_hub
from gevent.resolver.thread import Resolver as ThreadResolver


class AddressFirstResolver(ThreadResolver):  # type: ignore[misc]  # gevent ships no types
    """gevent's thread resolver, except for hosts that are already IP addresses."""

    def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0,  # noqa: A002 (socket's names)
                    proto: int = 0, flags: int = 0) -> Any:
        if host is not None:
            try:
                return _socket.getaddrinfo(host, port, family, type, proto, flags | _socket.AI_NUMERICHOST)
            except OSError:
                pass  # a name (or an address this call rejects): the thread pool answers, errors included
        return super().getaddrinfo(host, port, family, type, proto, flags)


def install() -> None:
    """Resolve this worker's new connections with AddressFirstResolver (in a gevent worker, after patching)."""
    hub = get_hub()
    hub.resolver = AddressFirstResolver(hub=hub)
