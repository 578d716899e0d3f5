"""The worker's resolver: IP addresses without the thread pool, names through it."""
from __future__ import annotations

import socket

import pytest
from gevent import get_hub

from app.upstream.resolver import AddressFirstResolver


class RecordingPool:
    """Stands in for gevent's thread pool: records what would have gone to a thread."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply(self, function, args=(), kwargs=None):
        self.calls.append(args)
        return function(*args, **(kwargs or {}))


@pytest.fixture
def resolver():
    made = AddressFirstResolver(hub=get_hub())
    made.pool = RecordingPool()
    return made


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.5", "::1"])
def test_an_address_is_converted_without_a_thread(resolver, host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    [(got_family, kind, _, _, address)] = resolver.getaddrinfo(host, 8000, 0, socket.SOCK_STREAM)
    assert (got_family, kind, address[:2]) == (family, socket.SOCK_STREAM, (host, 8000))
    assert resolver.pool.calls == []


def test_a_name_goes_to_the_thread_pool(resolver):
    found = resolver.getaddrinfo("localhost", 6379, 0, socket.SOCK_STREAM)
    assert found and all(entry[4][1] == 6379 for entry in found)
    assert [call[0] for call in resolver.pool.calls] == ["localhost"]


def test_an_unknown_name_fails_as_it_did(resolver):
    with pytest.raises(socket.gaierror):
        resolver.getaddrinfo("no-such-host.invalid", 80, 0, socket.SOCK_STREAM)
    assert [call[0] for call in resolver.pool.calls] == ["no-such-host.invalid"]
