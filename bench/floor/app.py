# The least a gateway on gunicorn + gevent (+ Flask) can do per request: relay the body
# upstream on a kept-alive connection and answer with the upstream's body, or relay its
# stream as it arrives.
# gunicorn -c bench/seed/gunicorn.conf.py bench.floor.app:wsgi   (no Flask)
# gunicorn -c bench/seed/gunicorn.conf.py bench.floor.app:app    (a Flask view)
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import urllib3
from flask import Flask, Response, request

from app.upstream.http import Response as UpstreamResponse

UPSTREAM = os.environ.get("VLLM_URL", "http://localhost:8000")
POOL = urllib3.PoolManager(maxsize=64, block=False, retries=False)
JSON = {"Content-Type": "application/json"}


def _relay(body: bytes, *, preload_content: bool = True) -> urllib3.BaseHTTPResponse:
    return POOL.request("POST", UPSTREAM + "/v1/completions", body=body, headers=JSON,
                        preload_content=preload_content)


def _relay_stream(body: bytes) -> Iterator[bytes]:
    """The upstream's stream, read as Sluice reads it (app/upstream/http.py): each piece all the socket
    held, de-chunked, so that what Sluice costs per event above this is its own work."""
    return UpstreamResponse(_relay(body, preload_content=False)).iter_content()


def _streamed(body: bytes) -> bool:
    return bool(json.loads(body).get("stream"))


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    if _streamed(body):
        events = _relay_stream(body)
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return events
    upstream = _relay(body)
    start_response(f"{upstream.status} OK", [("Content-Type", "application/json"),
                                             ("Content-Length", str(len(upstream.data)))])
    return [upstream.data]


app = Flask(__name__)


@app.post("/v1/completions")
def completions() -> Response:
    body = request.get_data()
    if _streamed(body):
        return Response(_relay_stream(body), content_type="text/event-stream")
    upstream = _relay(body)
    return Response(upstream.data, status=upstream.status, content_type="application/json")
