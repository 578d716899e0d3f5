"""`sluice serve` as a person runs it, with its own engine (it runs before the shared one exists).

Engine and gateway come up and the printed curl command works as printed; a killed engine
is restarted while /readyz says why; SIGTERM (the path Ctrl-C takes too) stops everything
and leaves no process behind.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.engine.layout import PROJECT_ROOT
from bench.processes import free_port

pytestmark = pytest.mark.e2e


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def descendants(root: int) -> set[int]:
    """Every live process below root (children in their own sessions included)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read().decode("ascii", "replace")
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rfind(")") + 2:].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {pid for pid in found if _live(pid)}


def wait_for_output(log: Path, text: str, process: subprocess.Popen, timeout: float) -> str:
    """The output so far, once it holds text; fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        output = log.read_text(errors="replace")
        if text in output:
            return output
        assert process.poll() is None, f"sluice serve exited with {process.returncode}:\n{output[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{output[-3000:]}"
        time.sleep(0.5)


def wait_for_state(path: Path, predicate, timeout: float) -> dict:
    """The engine state record once predicate(record) holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        if predicate(record):
            return record
        assert time.monotonic() < deadline, f"engine state stayed {record}"
        time.sleep(0.2)


def test_serve_starts_restarts_and_stops_cleanly(tmp_path, engine_settings, engine_python):
    # engine_python installed the engine and converted the model, so what is timed here is the start.
    gateway_url = f"http://127.0.0.1:{free_port()}"
    state_file = tmp_path / "engine-state.json"
    env = {**os.environ, "SLUICE_BIND": gateway_url[len("http://"):], "SLUICE_ENGINE_PORT": str(free_port()),
           "SLUICE_ENGINE_EMBEDDINGS_PORT": str(free_port()), "SLUICE_ENGINE_EMBEDDINGS": "1",
           "SLUICE_WORKERS": "1", "SLUICE_ENGINE_STATE_FILE": str(state_file), "SLUICE_ENGINE_MAX_RESTARTS": "2"}
    env.pop("SLUICE_UPSTREAM_URL", None)
    log = tmp_path / "serve.log"
    start_timeout = engine_settings["ENGINE_START_TIMEOUT"]
    # The console script when the project is installed (make does), else the same entry point by module.
    script = Path(sys.executable).parent / "sluice"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    with open(log, "wb") as output:
        serve = subprocess.Popen([*command, "serve"], cwd=PROJECT_ROOT, env=env,
                                 stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    family: set[int] = set()
    try:
        printed = wait_for_output(log, "press Ctrl-C to stop", serve, start_timeout + 60)
        assert f"Sluice is ready at {gateway_url}" in printed

        # The example works exactly as printed.
        curl = re.search(r"^\s+(curl .+)$", printed, re.M).group(1)
        reply = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120,
                                          check=True).stdout)
        assert reply["usage"]["completion_tokens"] == 32 and reply["text"]

        # The embedding engine runs beside the chat model, behind the same gateway.
        models = requests.get(gateway_url + "/v1/models", timeout=10).json()["data"]
        assert sorted(m["id"] for m in models) == ["minilm", engine_settings["ENGINE_SERVED_MODEL_NAME"]]
        embedded = requests.post(gateway_url + "/v1/embeddings", json={"model": "minilm", "input": "hello"}, timeout=60)
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384

        record = wait_for_state(state_file, lambda r: r.get("state") == "running", 10)
        ready = requests.get(gateway_url + "/readyz", timeout=10)
        assert ready.status_code == 200 and len(ready.json()["replicas"]) == 2

        # A dead engine: /readyz says why at once, the supervisor brings it back.
        os.kill(record["pid"], signal.SIGKILL)
        wait_for_state(state_file, lambda r: r.get("state") == "restarting", 10)
        not_ready = requests.get(gateway_url + "/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert "exited with code -9" in not_ready.json()["error"]["message"]
        record = wait_for_state(state_file, lambda r: r.get("state") == "running", start_timeout + 30)
        assert record["restarts"] == 1
        assert requests.get(gateway_url + "/readyz", timeout=10).status_code == 200
        body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        assert requests.post(gateway_url + "/v1/generate", json=body, timeout=120).status_code == 200

        family = descendants(serve.pid)
        assert len(family) >= 6, family  # gunicorn master and worker, two vLLM servers and engine cores at least
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=90) == 0, log.read_text()[-3000:]
        left = {pid for pid in family if _live(pid)}
        assert not left, f"processes left behind: {left}"
        assert not state_file.exists(), "a clean stop removes the state record"
        assert "sluice: stopped" in log.read_text()
    finally:
        family |= descendants(serve.pid) if serve.poll() is None else set()
        for pid in family | {serve.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        serve.wait()
