"""The embedded engine: a real vLLM (CPU build) that `sluice serve` installs, feeds and supervises.

Only the standard library is used here: these modules run in the gateway's environment
and drive the engine's own virtualenv (ENGINE_HOME/engine/venv) through subprocesses.
"""
