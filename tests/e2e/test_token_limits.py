"""Token limits counted from the real vLLM's usage, streams cut by the client included."""
from __future__ import annotations

import json
import time

import pytest
import requests

from app.access.keys import FileKeyStore, KeyRing
from bench.processes import Gateway
from tests.e2e.clients import LONG_PROMPT

pytestmark = pytest.mark.e2e

WINDOW = 10  # seconds: SLUICE_TOKEN_WINDOW, short so that the test sees the window move


@pytest.fixture(scope="module")
def limited(engine, tmp_path_factory):
    """A gateway where key `small` may use 120 tokens per window."""
    folder = tmp_path_factory.mktemp("tokens")
    keys_file = folder / "keys.json"
    ring = KeyRing(FileKeyStore(str(keys_file)), None)
    small, _ = ring.create("small", tpm=120)
    cut, _ = ring.create("cut", tpm=2000)
    server = Gateway({"SLUICE_UPSTREAM_URL": engine.spec.url, "SLUICE_KEYS_FILE": str(keys_file),
                      "SLUICE_TOKEN_WINDOW": str(WINDOW)}, log=folder / "gateway.log")
    yield server, {"small": small, "cut": cut}
    server.stop()


def generate(server: Gateway, key: str, **body) -> requests.Response:
    return requests.post(server.url + "/v1/generate", headers={"Authorization": f"Bearer {key}",
                                                               "Connection": "close"},
                         json={"prompt": "Count: one, two,", "temperature": 0, **body}, timeout=120)


def test_a_key_that_spent_its_tokens_gets_429_until_the_window_moves(limited):
    server, keys = limited
    spent = 0
    for _ in range(10):
        reply = generate(server, keys["small"], max_tokens=20)
        if reply.status_code == 429:
            break
        assert reply.status_code == 200, reply.text
        spent += reply.json()["usage"]["total_tokens"]
    assert reply.status_code == 429 and reply.json()["error"]["code"] == "token_limit_exceeded"
    assert spent > 60, "the real usage was counted, not only estimates"
    time.sleep(int(reply.headers["Retry-After"]) + 0.5)
    assert generate(server, keys["small"], max_tokens=20).status_code == 200


def test_a_stream_cut_by_the_client_still_counts_its_tokens(limited):
    server, keys = limited
    headers = {"Authorization": f"Bearer {keys['cut']}"}
    before = int(generate(server, keys["cut"], max_tokens=1).headers["X-RateLimit-Remaining-Tokens"])
    with requests.post(server.url + "/v1/generate/stream", headers=headers, stream=True, timeout=120,
                       json={"prompt": LONG_PROMPT, "max_tokens": 300, "temperature": 0}) as reply:
        events = 0
        for line in reply.iter_lines():
            if line.startswith(b"data: ") and json.loads(line[6:]).get("text"):
                events += 1
                if events == 10:
                    break  # leaving the block closes the connection: the client is gone
    time.sleep(1.0)  # the gateway settles the cut stream when its relay ends
    after = int(generate(server, keys["cut"], max_tokens=1).headers["X-RateLimit-Remaining-Tokens"])
    charged = before - after
    # At least the tokens the client saw, far less than the 300 reserved at admission.
    assert 10 <= charged < 300, charged
