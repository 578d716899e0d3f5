"""End-to-end fixtures: real vLLMs for the session (started by app/engine's code), real gunicorn in front.

`engine` serves the chat model; `embedding_engine` (all-MiniLM-L6-v2 as `minilm`, pooling
runner) starts only for the tests that use it, and `pair_gateway` stands in front of both,
as `sluice serve` does.

The engine's environment and model come from ENGINE_HOME (~/.cache/sluice) as for
`sluice serve`: the first run installs them (about 7 minutes), later runs reuse them.
The machine has two cores: one engine at a time, so tests that start their own (test_serve.py)
run before the shared one starts.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app import config
from app.engine.embedding_model import ensure_embedding_model
from app.engine.environment import ensure_environment
from app.engine.layout import EngineLayout
from app.engine.model import ensure_model
from app.engine.process import EngineProcess, EngineSpec, start_engine
from app.engine.supervisor import StateFile
from bench.processes import Gateway, free_port
from tests.e2e.clients import MAX_NUM_SEQS

OWN_ENGINE_MODULES = ("test_serve",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the e2e tests that start their own engine before the shared engine exists."""
    slots = [i for i, item in enumerate(items) if "e2e" in Path(str(item.path)).parts]
    e2e = [items[i] for i in slots]
    ordered = sorted(e2e, key=lambda item: Path(str(item.path)).stem not in OWN_ENGINE_MODULES)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@pytest.fixture(scope="session")
def engine_settings() -> dict:
    """The settings `sluice serve` would use (ENGINE_HOME, ENGINE_DTYPE ... from the environment)."""
    return config.load()


@pytest.fixture(scope="session")
def engine_python(engine_settings: dict) -> tuple[EngineLayout, Path, Path]:
    """The engine's layout, python and model folder, installed and converted if needed."""
    layout = EngineLayout.from_settings(engine_settings)
    python = ensure_environment(layout)
    return layout, python, ensure_model(engine_settings, layout, python)


@pytest.fixture(scope="session")
def engine(engine_settings: dict, engine_python: tuple[EngineLayout, Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """A real vLLM on a free loopback port, limited to MAX_NUM_SEQS running sequences."""
    _, python, model = engine_python
    spec = EngineSpec.from_settings(engine_settings, python, model, port=free_port(),
                                    extra_args=("--max-num-seqs", str(MAX_NUM_SEQS)))
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    process = start_engine(spec, log, engine_settings["ENGINE_START_TIMEOUT"])
    yield process
    process.stop()


@pytest.fixture(scope="session")
def engine_state(tmp_path_factory: pytest.TempPathFactory, engine: EngineProcess) -> StateFile:
    """The supervisor's state file the gateway reads, recording a running engine."""
    state = StateFile(tmp_path_factory.mktemp("state") / "engine.json")
    state.write("running", "", engine.pid, 0)
    return state


@pytest.fixture(scope="session")
def gateway(engine: EngineProcess, engine_state: StateFile,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Real gunicorn (one gevent worker) from the project root, in front of the engine."""
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    server = Gateway({"SLUICE_UPSTREAM_URL": engine.spec.url,
                      "SLUICE_ENGINE_STATE_FILE": str(engine_state.path)}, log=log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedding_engine(engine_settings: dict, engine_python: tuple[EngineLayout, Path, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The embedding engine `sluice serve` runs beside the chat model, on a free loopback port."""
    layout, python, _ = engine_python
    spec = EngineSpec.for_embeddings(engine_settings, python, ensure_embedding_model(layout, python),
                                     port=free_port())
    log = tmp_path_factory.mktemp("embedding-engine") / "engine.log"
    process = start_engine(spec, log, engine_settings["ENGINE_START_TIMEOUT"])
    yield process
    process.stop()


@pytest.fixture(scope="session")
def pair_gateway(engine: EngineProcess, embedding_engine: EngineProcess,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Real gunicorn in front of both engines, as `sluice serve` runs it."""
    log = tmp_path_factory.mktemp("pair-gateway") / "gateway.log"
    server = Gateway({"SLUICE_UPSTREAM_URL": f"{engine.spec.url},{embedding_engine.spec.url}"}, log=log)
    yield server
    server.stop()
