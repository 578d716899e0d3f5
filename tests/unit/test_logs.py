"""JSON log lines: the generation line's fields, request ids on every record, the level, no secrets."""
from __future__ import annotations

import io
import json
import logging

import pytest
import responses

from app.observe import logs
from app.observe.logs import JsonFormatter
from tests.conftest import UPSTREAM
from tests.unit.test_metrics import BLOCKING_REPLY, COMPLETIONS
from tests.unit.test_stream_relay import UPSTREAM_STREAM


@pytest.fixture
def log_lines():
    """The JSON lines the gateway logs during the test, decoded."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def generation_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line.get("event") == "generation"]


@responses.activate
def test_one_line_per_blocking_generation(client, log_lines):
    responses.post(COMPLETIONS, json=BLOCKING_REPLY)
    client.post("/v1/generate", json={"prompt": "The capital of France is"}, headers={"X-Request-ID": "req-7"})
    [line] = generation_lines(log_lines())
    assert line["request_id"] == "req-7"
    assert {k: line[k] for k in ("key_name", "route", "model", "stream", "replica", "status", "outcome",
                                 "error_code", "prompt_tokens", "completion_tokens", "ttft_seconds")} == {
        "key_name": "anonymous", "route": "/v1/generate", "model": "sim-model", "stream": False,
        "replica": UPSTREAM, "status": 200, "outcome": "completed", "error_code": None,
        "prompt_tokens": 4, "completion_tokens": 1, "ttft_seconds": None}
    assert line["duration_seconds"] > 0 and line["level"] == "info" and line["pid"] > 0
    assert line["time"].endswith("+00:00")


@responses.activate
def test_stream_line_has_time_to_first_token(client, log_lines):
    responses.post(COMPLETIONS, body=UPSTREAM_STREAM, content_type="text/event-stream")
    assert client.post("/v1/generate/stream", json={"prompt": "the sky"}).data.endswith(b"data: [DONE]\n\n")
    [line] = generation_lines(log_lines())
    assert line["stream"] is True and line["outcome"] == "completed"
    assert 0 <= line["ttft_seconds"] <= line["duration_seconds"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3, 3)


@responses.activate
def test_upstream_failure_line_names_the_error(client, log_lines):
    responses.post(COMPLETIONS, status=500, json={"error": {"message": "boom"}})
    client.post("/v1/generate", json={"prompt": "x"})
    [line] = generation_lines(log_lines())
    assert (line["outcome"], line["status"], line["error_code"]) == ("upstream_error", 502, "upstream_500")


def test_ordinary_records_carry_the_request_id(app, log_lines):
    @app.route("/noisy")
    def noisy():
        logging.getLogger("app.noisy").warning("something %s", "odd")
        return "ok"

    app.test_client().get("/noisy", headers={"X-Request-ID": "abc-1", "Authorization": "Bearer sk-very-secret"})
    [line] = [line for line in log_lines() if line["logger"] == "app.noisy"]
    assert (line["request_id"], line["level"], line["message"]) == ("abc-1", "warning", "something odd")
    assert "sk-very-secret" not in json.dumps(log_lines())


def test_exceptions_are_one_json_line_with_the_traceback(app, log_lines):
    @app.route("/broken")
    def broken():
        raise RuntimeError("bug")

    assert app.test_client().get("/broken").status_code == 500
    [line] = [line for line in log_lines() if line["message"] == "unhandled error"]
    assert line["level"] == "error" and "RuntimeError: bug" in line["exception"]


def test_level_comes_from_the_setting(make_app):
    try:
        make_app(LOG_LEVEL="warning")
        assert logging.getLogger().level == logging.WARNING
        make_app(LOG_LEVEL="debug")
        assert logging.getLogger().level == logging.DEBUG
    finally:
        logs.configure("info")


def test_the_json_handler_is_installed_once(make_app):
    make_app()
    make_app()
    assert sum(isinstance(h, logs._JsonHandler) for h in logging.getLogger().handlers) == 1
