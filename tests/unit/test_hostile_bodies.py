"""Bodies built to break a parser get a clear 4xx in the one error shape, never a 500."""
from __future__ import annotations

import json

import pytest

from app.errors import MAX_LISTED_PROBLEMS


def post(client, data: bytes, content_type: str = "application/json"):
    return client.post("/v1/generate", data=data, content_type=content_type)


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
], ids=["arrays", "objects"])
def test_deeply_nested_json_is_400_not_a_recursion_error(client, data):
    reply = post(client, data)
    assert reply.status_code == 400
    assert reply.json["error"] == {"message": "JSON body is nested too deeply.", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_json"}


def test_number_with_thousands_of_digits_is_400(client):
    reply = post(client, b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}")
    assert reply.status_code == 400 and reply.json["error"]["code"] == "invalid_json"
    assert "number too long" in reply.json["error"]["message"]


@pytest.mark.parametrize("data", [b'{"prompt": "\xff\xfe"}', b"\xff\xfe", b'{"prompt": "caf\xe9"}'])
def test_invalid_utf8_is_400_invalid_json(client, data):
    reply = post(client, data)
    assert reply.status_code == 400 and reply.json["error"]["code"] == "invalid_json"


def test_huge_number_of_fields_gets_a_short_422(client):
    body = {"prompt": "x", **{f"field{i}": 1 for i in range(50_000)}}
    reply = post(client, json.dumps(body).encode())
    assert reply.status_code == 422
    message = reply.json["error"]["message"]
    assert message.count("Unknown field") == MAX_LISTED_PROBLEMS
    assert message.endswith(f"and {50_000 - MAX_LISTED_PROBLEMS} more problems.")
    assert len(reply.data) < 2000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", ""])
def test_wrong_content_type_is_415(client, content_type):
    reply = post(client, b'{"prompt": "x"}', content_type)
    assert reply.status_code == 415 and reply.json["error"]["code"] == "unsupported_media_type"
