"""The native request schema's edge cases, through the real view (so messages are what clients see)."""
from __future__ import annotations

import json

import pytest
import responses

from tests.conftest import UPSTREAM

COMPLETION = {"id": "cmpl-1", "object": "text_completion", "model": "sim-model",
              "choices": [{"index": 0, "text": " hi", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

VALID = [
    {"prompt": "x"},
    {"prompt": "x", "max_tokens": 1},
    {"prompt": "x", "max_tokens": 4096},
    {"prompt": "x", "temperature": 0},
    {"prompt": "x", "temperature": 2},
    {"prompt": "x", "top_p": 1},
    {"prompt": "x", "top_p": 0.01},
    {"prompt": "x", "stop": "\n"},
    {"prompt": "x", "stop": ["a", "b", "c", "d"]},
    {"prompt": "x", "seed": 7, "model": "sim-model"},
    {"prompt": "x", "seed": 2**63 - 1},
    {"prompt": "é" * 32_000},
]

INVALID = [
    ({}, "prompt", "Missing data"),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": 5}, "prompt", "Not a valid string"),
    ({"prompt": "x" * 32_001}, "prompt", "at most 32000"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"prompt": "x", "max_tokens": 4097}, "max_tokens", "at most 4096"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "Not a valid integer"),
    ({"prompt": "x", "temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ({"prompt": "x", "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"prompt": "x", "top_p": 0}, "top_p", "greater than 0"),
    ({"prompt": "x", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "At most 4"),
    ({"prompt": "x", "stop": [1]}, "stop", "string"),
    ({"prompt": "x", "stop": [""]}, "stop", "not be empty"),
    ({"prompt": "x", "model": ""}, "model", "Shorter than minimum"),
    ({"prompt": "x", "seed": 2**63}, "seed", "less than or equal to"),
    ({"prompt": "x", "temprature": 1}, "temprature", "Unknown field"),
    ([1, 2], "body", "Invalid input type"),
]


@responses.activate
@pytest.mark.parametrize("body", VALID)
def test_valid_bodies_reach_the_upstream(client, body):
    responses.post(f"{UPSTREAM}/v1/completions", json=COMPLETION)
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 200, reply.json
    sent = responses.calls[0].request
    forwarded = json.loads(sent.body)
    assert forwarded["prompt"] == body["prompt"]
    assert forwarded["max_tokens"] == body.get("max_tokens", 256)
    assert forwarded["temperature"] == body.get("temperature", 0.7)
    assert forwarded["stream"] is False


@pytest.mark.parametrize("body, param, rule", INVALID)
def test_invalid_bodies_get_422_naming_field_and_rule(client, body, param, rule):
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 422
    error = reply.json["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert f"{param}: " in error["message"] and rule in error["message"]


def test_configured_limits_apply(make_app):
    client = make_app(MAX_TOKENS_LIMIT=10, MAX_PROMPT_CHARS=3).test_client()
    reply = client.post("/v1/generate", json={"prompt": "abcd", "max_tokens": 11})
    assert reply.status_code == 422
    assert "at most 3" in reply.json["error"]["message"] and "at most 10" in reply.json["error"]["message"]
