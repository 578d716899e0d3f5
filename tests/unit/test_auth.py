"""Authentication in the app: open paths, the Bearer header, and key lookups while Redis is down."""
from __future__ import annotations

import pytest

from app.access.auth import bearer_key
from app.access.keys import FileKeyStore, KeyRing, RedisKeyStore
from app.errors import Unauthorized
from bench.processes import Redis


@pytest.mark.parametrize("header, key", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER abc", "abc")])
def test_bearer_scheme_is_case_insensitive_the_key_is_not_touched(header, key):
    assert bearer_key(header) == key


@pytest.mark.parametrize("header, says", [
    (None, "Missing API key"), ("", "Missing API key"), ("Basic abc", "Bearer scheme"),
    ("abc", "Bearer scheme"), ("Bearer", "Empty API key"), ("Bearer   ", "Empty API key"),
])
def test_bad_headers_say_what_is_wrong(header, says):
    with pytest.raises(Unauthorized, match=says) as caught:
        bearer_key(header)
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="sluice"')


@pytest.fixture
def keyed_app(make_app, tmp_path):
    path = tmp_path / "keys.json"
    key, _ = KeyRing(FileKeyStore(path), None).create("alice")
    return make_app(KEYS_FILE=str(path)), key


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json"])
def test_probes_and_docs_need_no_key(keyed_app, path):
    app, _ = keyed_app
    assert app.test_client().get(path).status_code == 200


def test_a_valid_key_gets_through_to_validation(keyed_app):
    app, key = keyed_app
    reply = app.test_client().post("/v1/generate", json={}, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 422


def test_without_keys_configured_no_key_is_asked_for(client):
    assert client.post("/v1/generate", json={}).status_code == 422


@pytest.fixture
def redis_down_apps(make_app, tmp_path):
    """Apps keyed in a Redis that is then stopped: (app failing open, app failing closed, keys)."""
    server = Redis(log=tmp_path / "redis.log")
    try:
        ring = KeyRing(None, RedisKeyStore(server.client))
        seen, _ = ring.create("seen")
        unseen, _ = ring.create("unseen")
        apps = {mode: make_app(REDIS_URL=server.url, REDIS_FAILURE_MODE=mode, DEFAULT_RPM=100)
                for mode in ("open", "closed")}
        for app in apps.values():  # each worker has seen this key while Redis was up
            assert post(app, seen).status_code == 422
    finally:
        server.stop()
    return apps, seen, unseen


def post(app, key):
    return app.test_client().post("/v1/generate", json={}, headers={"Authorization": f"Bearer {key}"})


def test_redis_down_failing_open_keeps_known_keys_and_never_lets_unknown_ones_in(redis_down_apps):
    apps, seen, unseen = redis_down_apps
    assert post(apps["open"], seen).status_code == 422
    reply = post(apps["open"], unseen)
    assert reply.status_code == 503 and reply.json["error"]["code"] == "redis_unavailable"
    assert post(apps["open"], "sluice-made-up").status_code == 503


def test_redis_down_failing_closed_refuses_everyone(redis_down_apps):
    apps, seen, _ = redis_down_apps
    reply = post(apps["closed"], seen)
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json["error"]["code"] == "redis_unavailable"
