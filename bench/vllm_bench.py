"""vLLM's own benchmark client (`vllm bench serve`) directly against the embedded vLLM, then through Sluice.

The engine is started with the app's own code (app/engine), on a free port, and stopped
at the end. Nothing is pinned here: vLLM needs both cores. Sluice runs as in the suite
(one gevent worker, its features on) and must serve the OpenAI-compatible
/v1/completions, which is what the client sends.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from app import config
from app.engine.environment import ensure_environment
from app.engine.layout import EngineLayout
from app.engine.model import ensure_model
from app.engine.process import EngineSpec, start_engine
from app.engine.report import EngineError
from bench.designs import WORKER_CONNECTIONS, sluice_api
from bench.features import switch_on
from bench.loadgen import COMPLETIONS
from bench.processes import Gateway, free_port

# A load the CPU engine finishes in about a minute per path (about 45 tokens/s at 8 streams).
CLIENT_ARGS = ("--backend", "openai", "--endpoint", "/v1/completions", "--dataset-name", "random",
               "--random-input-len", "128", "--random-output-len", "64", "--ignore-eos", "--num-prompts", "32",
               "--max-concurrency", "8", "--seed", "0", "--disable-tqdm",
               # vLLM reports ttft, tpot and itl unless asked: the end-to-end latency is the table's last column
               "--percentile-metrics", "ttft,tpot,itl,e2el")
KEPT = ("completed", "failed", "duration", "request_throughput", "output_throughput", "median_ttft_ms",
        "p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms")
CLIENT_TIMEOUT = 900
VLLM_CLI = Path(__file__).with_name("vllm_cli.py")  # vLLM's CLI under the CPU build's package name


def _client(python: Path, url: str, model: str, tokenizer: Path, result: Path, api_key: str | None) -> dict[str, Any]:
    """Run `vllm bench serve` against `url`; its saved result, or the error."""
    argv = [str(python), str(VLLM_CLI), "bench", "serve", "--base-url", url, "--model", model,
            "--tokenizer", str(tokenizer), *CLIENT_ARGS, "--save-result", "--result-dir", str(result.parent),
            "--result-filename", result.name]
    # Without VLLM_TARGET_DEVICE=cpu the client loads AVX-512 kernels and dies with SIGILL here.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    env.pop("OPENAI_API_KEY", None)
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # the client sends it as a bearer token
    print(f"[bench] {shlex.join(argv)}", flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    if done.returncode != 0 or not result.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        return {"error": f"vllm bench serve exited {done.returncode}: {' / '.join(tail)}"}
    saved = json.loads(result.read_text())
    return {key: saved[key] for key in KEPT if key in saved}


def run(workdir: Path) -> dict[str, Any]:
    """Both paths, direct first; {'skipped': why} when the engine cannot be started."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # the engine and its client use every core
    # Its own folder: the suite's keys file (same work folder) already holds the key it names.
    workdir = workdir / "vllm"
    workdir.mkdir(exist_ok=True)
    settings = config.load()
    layout = EngineLayout.from_settings(settings)
    try:
        python = ensure_environment(layout)
        model_dir = ensure_model(settings, layout, python)
    except EngineError as exc:
        return {"skipped": f"the embedded engine could not be prepared: {exc}"}
    spec = EngineSpec.from_settings(settings, python, model_dir, port=free_port())
    command = shlex.join(["vllm bench serve", *CLIENT_ARGS])
    results: dict[str, Any] = {"command": command, "model": spec.served_model_name, "paths": {}}
    try:
        engine = start_engine(spec, workdir / "engine.log", settings["ENGINE_START_TIMEOUT"])
    except EngineError as exc:
        return {"skipped": f"the embedded engine did not start: {exc}"}
    features = switch_on(workdir, dict(os.environ))
    try:
        paths = results["paths"]
        paths["direct to vLLM"] = _client(python, spec.url, spec.served_model_name, model_dir,
                                          workdir / "vllm-direct.json", None)
        gateway = Gateway({"SLUICE_UPSTREAM_URL": spec.url, "SLUICE_WORKERS": "1",
                           "SLUICE_WORKER_CONNECTIONS": str(WORKER_CONNECTIONS), **features.settings},
                          log=workdir / "vllm-gunicorn.log")
        try:
            if sluice_api(gateway.url) is COMPLETIONS:
                key = features.headers.get("Authorization", "").removeprefix("Bearer ") or None
                paths["through Sluice (1 worker)"] = _client(python, gateway.url, spec.served_model_name, model_dir,
                                                             workdir / "vllm-sluice.json", key)
            else:
                paths["through Sluice (1 worker)"] = {
                    "error": "this build of Sluice does not serve the OpenAI-compatible /v1/completions"}
        finally:
            gateway.stop()
    finally:
        features.stop()
        engine.stop()
    return results
