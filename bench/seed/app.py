# The guide's Flask proxy in front of vLLM, kept as published (only the upstream's address
# comes from the environment, so that the benchmark can point it at its simulator):
# gunicorn -k gevent -w 1 bench.seed.app:app
import os

import requests
from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)
VLLM_URL = os.environ.get("VLLM_URL", "http://localhost:8000")


@app.route("/v1/completions", methods=["POST"])
def completions():
    payload = request.get_json()
    if payload.get("stream"):
        upstream = requests.post(f"{VLLM_URL}/v1/completions", json=payload, stream=True)

        def generate():
            for chunk in upstream.iter_content(chunk_size=None):  # noqa: UP028 (as published)
                yield chunk

        return Response(stream_with_context(generate()), content_type="text/event-stream")
    upstream = requests.post(f"{VLLM_URL}/v1/completions", json=payload)
    return Response(upstream.content, status=upstream.status_code, content_type="application/json")
