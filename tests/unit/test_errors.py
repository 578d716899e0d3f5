"""The whole error table: every failure a client or an upstream can cause, in the one JSON shape."""
from __future__ import annotations

import pytest
import requests
import responses

from tests.conftest import UPSTREAM

GOOD = {"prompt": "hello"}
COMPLETIONS = f"{UPSTREAM}/v1/completions"


def assert_error_shape(reply, status: int, code: str | None = None) -> dict:
    assert reply.status_code == status, reply.data
    assert reply.mimetype == "application/json"
    error = reply.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code:
        assert error["code"] == code
    return error


# (what the client sends) -> (status, code)
CLIENT_FAULTS = [
    ("malformed JSON", dict(data=b'{"prompt": ', content_type="application/json"), 400, "invalid_json"),
    ("not JSON", dict(data=b"prompt=hello", content_type="application/x-www-form-urlencoded"), 415,
     "unsupported_media_type"),
    ("no content type", dict(data=b'{"prompt": "x"}'), 415, "unsupported_media_type"),
    ("body over the limit", dict(json={"prompt": "x" * 2_000_000}), 413, "body_too_large"),
    ("validation", dict(json={"prompt": "x", "max_tokens": -1}), 422, "validation_error"),
]


@pytest.mark.parametrize("name, kwargs, status, code", CLIENT_FAULTS, ids=[c[0] for c in CLIENT_FAULTS])
def test_client_faults(client, name, kwargs, status, code):
    assert_error_shape(client.post("/v1/generate", **kwargs), status, code)


def test_unknown_route_is_404(client):
    assert_error_shape(client.get("/v1/nothing-here"), 404, "not_found")


def test_wrong_method_is_405_with_allow(client):
    reply = client.get("/v1/generate")
    assert_error_shape(reply, 405, "method_not_allowed")
    assert "POST" in reply.headers["Allow"]


# (what the upstream does) -> (status, code)
UPSTREAM_FAULTS = [
    ("refused", dict(body=requests.ConnectionError("[Errno 111] Connection refused")), 502, "upstream_unreachable"),
    ("connect timeout", dict(body=requests.ConnectTimeout("timed out")), 504, "upstream_timeout"),
    ("read timeout", dict(body=requests.ReadTimeout("timed out")), 504, "upstream_timeout"),
    ("html instead of the API", dict(body="<html>hi</html>", content_type="text/html"), 502, "upstream_not_api"),
    ("json that is not a completion", dict(json={"hello": "world"}), 502, "upstream_bad_body"),
    ("500", dict(status=500, json={"error": {"message": "boom"}}), 502, "upstream_500"),
    ("503 overloaded", dict(status=503, body="busy"), 503, "upstream_overloaded"),
    ("429 overloaded", dict(status=429, json={"error": {"message": "slow down"}}), 503, "upstream_overloaded"),
    ("401 from upstream is the gateway's problem", dict(status=401, json={"error": {"message": "bad key"}}), 502,
     "upstream_401"),
]


@responses.activate
@pytest.mark.parametrize("name, mock, status, code", UPSTREAM_FAULTS, ids=[c[0] for c in UPSTREAM_FAULTS])
def test_upstream_faults_blocking(client, name, mock, status, code):
    responses.post(COMPLETIONS, **mock)
    error = assert_error_shape(client.post("/v1/generate", json=GOOD), status, code)
    if status == 503:
        assert client.post("/v1/generate", json=GOOD).headers["Retry-After"]
    assert error["type"] in ("upstream_error", "upstream_timeout", "service_unavailable")


@responses.activate
@pytest.mark.parametrize("name, mock, status, code", UPSTREAM_FAULTS, ids=[c[0] for c in UPSTREAM_FAULTS])
def test_upstream_faults_before_the_stream_are_statuses(client, name, mock, status, code):
    if name == "json that is not a completion":
        mock = dict(json={"hello": "world"})  # a JSON body where a stream was expected
        status, code = 502, "upstream_not_api"
    responses.post(COMPLETIONS, **mock)
    assert_error_shape(client.post("/v1/generate/stream", json=GOOD), status, code)


@responses.activate
@pytest.mark.parametrize("upstream_status, status", [(400, 400), (404, 404), (422, 422)])
def test_client_faults_found_by_the_upstream_pass_through(client, upstream_status, status):
    message = "This model's maximum context length is 2048 tokens."
    responses.post(COMPLETIONS, status=upstream_status,
                   json={"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
    error = assert_error_shape(client.post("/v1/generate", json=GOOD), status)
    assert error["message"] == message


def test_no_upstream_configured_is_503(make_app):
    client = make_app(UPSTREAM_URL="").test_client()
    assert_error_shape(client.post("/v1/generate", json=GOOD), 503, "no_upstream")
    assert_error_shape(client.get("/readyz"), 503, "no_upstream")


@responses.activate
def test_readyz_reports_the_upstream(client):
    responses.get(f"{UPSTREAM}/health", status=200)
    body = client.get("/readyz").json
    assert body["status"] == "ready"
    assert [(r["url"], r["state"]) for r in body["replicas"]] == [(UPSTREAM, "healthy")]
    responses.replace(responses.GET, f"{UPSTREAM}/health", status=503)
    error = assert_error_shape(client.get("/readyz"), 503, "upstream_not_ready")
    assert UPSTREAM in error["message"]


def test_readyz_reports_a_dead_engine(make_app, tmp_path):
    state = tmp_path / "engine.json"
    state.write_text('{"state": "restarting", "reason": "engine exited with code -9", "restarts": 1}')
    client = make_app(ENGINE_STATE_FILE=str(state)).test_client()
    error = assert_error_shape(client.get("/readyz"), 503, "engine_not_ready")
    assert "exited with code -9" in error["message"]


def test_healthz_needs_no_upstream(make_app):
    assert make_app(UPSTREAM_URL="").test_client().get("/healthz").json == {"status": "ok"}


def test_a_bug_is_a_500_without_traceback(app):
    @app.route("/boom")
    def boom():
        raise RuntimeError("secret internals")

    error = assert_error_shape(app.test_client().get("/boom"), 500, "internal_error")
    assert "secret" not in error["message"]
