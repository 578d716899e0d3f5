# The least a gateway on gunicorn + gevent (+ Flask) can do per request: relay the body
# upstream on a kept-alive connection and answer with the upstream's body.
# gunicorn -c bench/seed/gunicorn.conf.py bench.floor.app:wsgi   (no Flask)
# gunicorn -c bench/seed/gunicorn.conf.py bench.floor.app:app    (a Flask view)
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import urllib3
from flask import Flask, Response, request

UPSTREAM = os.environ.get("VLLM_URL", "http://localhost:8000")
POOL = urllib3.PoolManager(maxsize=64, block=False, retries=False)
JSON = {"Content-Type": "application/json"}


def _relay(body: bytes) -> urllib3.BaseHTTPResponse:
    return POOL.request("POST", UPSTREAM + "/v1/completions", body=body, headers=JSON)


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    upstream = _relay(environ["wsgi.input"].read(length))
    start_response(f"{upstream.status} OK", [("Content-Type", "application/json"),
                                             ("Content-Length", str(len(upstream.data)))])
    return [upstream.data]


app = Flask(__name__)


@app.post("/v1/completions")
def completions() -> Response:
    upstream = _relay(request.get_data())
    return Response(upstream.data, status=upstream.status, content_type="application/json")
