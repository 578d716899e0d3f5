"""`sluice serve`: the gateway in front of SLUICE_UPSTREAM_URL (or _UPSTREAMS_FILE), or of an embedded vLLM."""
from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.config import authentication_required
from app.engine.embedding_model import ensure_embedding_model
from app.engine.environment import ensure_environment
from app.engine.gateway_process import Gateway, curl_example
from app.engine.layout import EngineLayout
from app.engine.model import ensure_model
from app.engine.process import EngineSpec
from app.engine.report import EngineError, say
from app.engine.supervisor import EngineSupervisor, StateFile

POLL = 1.0
Stop = Callable[[], None]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP stop us the way Ctrl-C does (through the same cleanup)."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_all(stops: list[Stop]) -> None:
    """Stop the children in the reverse order of their start (gateway first, engine last), each whatever happens.

    A second signal that lands outside a stop's own wait makes that stop forceful (a stop is
    safe to repeat); an error in one stop must not leave the next child running.
    """
    for stop in reversed(stops):
        try:
            try:
                stop()
            except KeyboardInterrupt:
                stop()
        except Exception as exc:  # report it and go on to the next child
            say(f"error while stopping: {exc}")


def _run_gateway(settings: Mapping[str, Any], gateway: Gateway, upstream: str, stops: list[Stop],
                 check_engine: Stop, env: Mapping[str, str] | None = None) -> None:
    """Start gunicorn, say how to use it, then watch it and the engine until something ends."""
    say(f"starting the gateway on {gateway.url}")
    stops.append(gateway.stop)
    gateway.start(env)
    gateway.wait_listening()
    say(f"Sluice is ready at {gateway.url} (upstream: {upstream})")
    with_key = authentication_required(settings)
    if with_key:
        say("API keys are on: make one with `sluice keys create --name me` and export it as SLUICE_API_KEY")
    say(f"try it:\n\n    {curl_example(gateway.url, with_key)}\n")
    say("press Ctrl-C to stop")
    while True:
        if not gateway.alive():
            raise EngineError(f"the gateway (gunicorn) exited with code {gateway.returncode}: its messages are above")
        check_engine()
        time.sleep(POLL)


def _engine_specs(settings: Mapping[str, Any], layout: EngineLayout, python: Path,
                  engine_args: Sequence[str]) -> list[EngineSpec]:
    """The chat engine, and the embedding engine unless SLUICE_ENGINE_EMBEDDINGS=0 (models fetched if needed)."""
    specs = [EngineSpec.from_settings(settings, python, ensure_model(settings, layout, python), extra_args=engine_args)]
    if settings["ENGINE_EMBEDDINGS"]:
        specs.append(EngineSpec.for_embeddings(settings, python, ensure_embedding_model(layout, python)))
    return specs


def _supervise(settings: Mapping[str, Any], layout: EngineLayout, spec: EngineSpec, state_file: str,
               stops: list[Stop]) -> EngineSupervisor:
    """Start one engine under its supervisor (its state in its own file); its stop is registered first."""
    supervisor = EngineSupervisor(spec, layout.log_file(f"engine-{spec.port}.log"),
                                  StateFile(layout.state_file(state_file, spec.port)),
                                  settings["ENGINE_MAX_RESTARTS"], settings["ENGINE_START_TIMEOUT"])
    stops.append(supervisor.stop)
    supervisor.start()
    return supervisor


def _serve_engine(settings: Mapping[str, Any], engine_args: Sequence[str], stops: list[Stop]) -> None:
    """Install and start the embedded engines, then the gateway in front of them; supervise them all."""
    gateway = Gateway(settings)
    gateway.check_address()  # before minutes of install and start-up, not after
    layout = EngineLayout.from_settings(settings)
    python = ensure_environment(layout)
    specs = _engine_specs(settings, layout, python, engine_args)
    # A configured state file names the chat engine's; the embedding engine keeps its own beside the others.
    supervisors = [_supervise(settings, layout, spec, settings["ENGINE_STATE_FILE"] if i == 0 else "", stops)
                   for i, spec in enumerate(specs)]

    def check_engines() -> None:
        for supervisor in supervisors:
            supervisor.check()

    served = ", ".join(f"model {spec.served_model_name!r} at {spec.url}" for spec in specs)
    _run_gateway(settings, gateway, f"the embedded engines: {served}", stops, check_engines,
                 {"SLUICE_UPSTREAM_URL": ",".join(spec.url for spec in specs),
                  "SLUICE_ENGINE_STATE_FILE": ",".join(str(s.state.path) for s in supervisors)})


def serve(settings: Mapping[str, Any], engine_args: Sequence[str] = ()) -> int:
    """Run `sluice serve` until Ctrl-C or SIGTERM (exit 0) or a failure it cannot recover from (exit 1)."""
    stops: list[Stop] = []
    code = 0
    with _signals_interrupt():
        try:
            configured = settings["UPSTREAM_URL"] or settings["UPSTREAMS_FILE"]
            if configured:
                _run_gateway(settings, Gateway(settings), configured, stops, lambda: None)
            else:
                _serve_engine(settings, engine_args, stops)
        except KeyboardInterrupt:
            say("stopping")
        except EngineError as exc:
            say(f"error: {exc}")
            code = 1
        finally:
            _stop_all(stops)
    say("stopped")
    return code
