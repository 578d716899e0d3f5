"""Fixtures shared by every test: a configured app and its test client (Flask's tutorial shape)."""
from __future__ import annotations

import os

import pytest

from app import create_app

UPSTREAM = "http://upstream.test:8000"


@pytest.fixture(scope="session", autouse=True)
def database_url(tmp_path_factory):
    """A SQLite database for the tests' apps and the commands they run, never the instance folder's."""
    url = f"sqlite:///{tmp_path_factory.mktemp('database') / 'sluice.db'}"
    saved = os.environ.get("SLUICE_DATABASE_URL")
    os.environ["SLUICE_DATABASE_URL"] = url
    yield url
    if saved is None:
        os.environ.pop("SLUICE_DATABASE_URL", None)
    else:
        os.environ["SLUICE_DATABASE_URL"] = saved


@pytest.fixture
def make_app(database_url):
    """Build an app with settings overridden for one test."""

    def build(**overrides):
        settings = {"UPSTREAM_URL": UPSTREAM, "MODEL": "sim-model", "DATABASE_URL": database_url}
        settings.update(overrides)
        return create_app(settings)

    return build


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the session; tests that stop Redis start their own."""
    from bench.processes import Redis

    server = Redis(log=tmp_path_factory.mktemp("redis") / "redis.log")
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """The session's Redis, emptied for this test."""
    redis_server.client.flushdb()
    return redis_server.client
