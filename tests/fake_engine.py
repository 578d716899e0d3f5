"""A stand-in for vLLM, for the fast tests of app/engine: a package named like vLLM's server module.

`python -m vllm.entrypoints.openai.api_server --port P` with this on PYTHONPATH answers
GET /health with 200 and nothing else, so that supervision and `sluice serve`'s lifecycle are
tested in seconds; what vLLM itself does is the other e2e tests' business.
"""
from __future__ import annotations

from pathlib import Path

SERVER = '''
import argparse, http.server, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
args, _ = parser.parse_known_args()
time.sleep(float(os.environ.get("FAKE_ENGINE_START_DELAY", "0")))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()
'''


def install(root: Path) -> Path:
    """Write the fake package under root; returns the folder to put on PYTHONPATH."""
    package = root / "fake-vllm"
    module = package / "vllm" / "entrypoints" / "openai"
    module.mkdir(parents=True)
    for folder in (package / "vllm", package / "vllm" / "entrypoints", module):
        (folder / "__init__.py").write_text("")
    (module / "api_server.py").write_text(SERVER)
    return package
