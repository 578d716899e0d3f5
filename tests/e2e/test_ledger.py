"""The usage ledger against the real vLLM: one row per request, with exactly vLLM's token counts."""
from __future__ import annotations

import concurrent.futures
import json

import pytest
import requests

from bench.processes import Gateway
from tests.ledger_helpers import fresh_database, ledger_rows

pytestmark = pytest.mark.e2e


def test_n_requests_give_n_rows_whose_tokens_equal_vllms_usage(engine, tmp_path):
    database = fresh_database("sqlite", tmp_path)
    server = Gateway({"SLUICE_UPSTREAM_URL": engine.spec.url, "SLUICE_WORKERS": "2",
                      "SLUICE_DATABASE_URL": database}, log=tmp_path / "gateway.log")

    def ask(i: int) -> dict:
        body = {"model": "smollm2", "prompt": f"Count to {i + 3}:", "max_tokens": 4 + i, "temperature": 0,
                "stream": i % 2 == 1}
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        reply = requests.post(server.url + "/v1/completions", json=body, headers={"Connection": "close"},
                              timeout=120, stream=body["stream"])
        assert reply.status_code == 200, reply.text
        if not body["stream"]:
            return reply.json()["usage"]
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith(b"data: {")]
        return next(e["usage"] for e in reversed(events) if e.get("usage"))

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            usages = list(pool.map(ask, range(8)))
    finally:
        server.stop()  # the stopping workers write what they still buffer
    rows = ledger_rows(database)
    assert len(rows) == 8
    assert sorted((u["prompt_tokens"], u["completion_tokens"]) for u in usages) == sorted(
        (r["prompt_tokens"], r["completion_tokens"]) for r in rows)
    assert all(r["usage_reported"] and r["model"] == "smollm2" and r["outcome"] == "completed" for r in rows)
