"""The designs measured side by side: no proxy, nginx, the guide's Flask proxy, the stack's floors, Sluice
with 1 and 2 workers, Sluice behind nginx.

Every proxy process (nginx, the small relays' and Sluice's gunicorn masters and workers, and the Redis
that Sluice's limits use) is pinned to PROXY_CPU; the load generator and the simulator run on LOAD_CPU.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.features import Features
from bench.loadgen import COMPLETIONS, NATIVE, Api, Endpoint
from bench.nginx import BareNginx
from bench.processes import Gateway, GeventApp, Service, Simulator
from bench.sampler import pin

PROXY_CPU = 0
LOAD_CPU = 1
# Enough for the capacity test's 2,000 streams (each also holds an upstream connection);
# a user who wants that many streams per worker sets it the same way.
WORKER_CONNECTIONS = 4096


@dataclass(frozen=True)
class Design:
    """One way of putting a proxy (or none) between clients and the upstream."""

    name: str
    label: str
    sluice_workers: int = 0
    nginx: bool = False
    relay_app: str = ""  # a small relay's WSGI app (the seed proxy, a floor) run by GeventApp instead of Sluice


DIRECT = Design("direct", "direct to the simulator (no proxy)")
NGINX = Design("nginx", "nginx, pure reverse proxy", nginx=True)
SEED_FLASK = Design("seed-flask", "the guide's Flask + requests proxy, gunicorn -k gevent -w 1",
                    relay_app="bench.seed.app:app")
# The stack's own cost (bench/floor/): gunicorn + gevent + urllib3, then the same with a Flask view.
FLOOR_WSGI = Design("floor-wsgi", "bare WSGI relay on urllib3, gunicorn -k gevent -w 1",
                    relay_app="bench.floor.app:wsgi")
FLOOR_FLASK = Design("floor-flask", "one Flask view relaying on urllib3, gunicorn -k gevent -w 1",
                     relay_app="bench.floor.app:app")
SLUICE_1 = Design("sluice-1w", "Sluice, 1 gevent worker", sluice_workers=1)
SLUICE_2 = Design("sluice-2w", "Sluice, 2 gevent workers on the one core", sluice_workers=2)
NGINX_SLUICE = Design("nginx+sluice", "nginx in front of Sluice (1 worker)", sluice_workers=1, nginx=True)
ALL = (DIRECT, NGINX, SEED_FLASK, FLOOR_WSGI, FLOOR_FLASK, SLUICE_1, SLUICE_2, NGINX_SLUICE)
BY_NAME = {design.name: design for design in ALL}


@dataclass
class Running:
    """A started design: where to send load, which processes to sample, how to stop it."""

    endpoint: Endpoint
    target_pids: list[int]
    services: list[Service] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the proxies, front first; SIGKILL to the group because a benchmark keeps no state."""
        for service in reversed(self.services):
            service.stop(signal.SIGKILL)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sluice_api(url: str) -> Api:
    """Sluice's OpenAI-compatible /v1/completions when this build serves it (relayed as is), else the native API."""
    paths = requests.get(url + "/openapi.json", timeout=10).json().get("paths", {})
    return COMPLETIONS if "/v1/completions" in paths else NATIVE


def start(design: Design, upstream: Simulator, workdir: Path, features: Features) -> Running:
    """Start the design's proxies in front of `upstream`, pinned to PROXY_CPU."""
    services: list[Service] = []
    url, api, headers, pids = upstream.url, COMPLETIONS, {}, []
    try:
        if design.relay_app:
            services.append(GeventApp(design.name, design.relay_app, upstream.url,
                                      log=workdir / f"{design.name}-gunicorn.log"))
            url = services[-1].url
        if design.sluice_workers:
            gateway = Gateway({"SLUICE_UPSTREAM_URL": upstream.url, "SLUICE_WORKERS": str(design.sluice_workers),
                               "SLUICE_WORKER_CONNECTIONS": str(WORKER_CONNECTIONS),
                               # the admission bound sized for the 2,000-stream run, as an operator would
                               "SLUICE_MAX_IN_FLIGHT": str(WORKER_CONNECTIONS), **features.settings},
                              log=workdir / f"{design.name}-gunicorn.log")
            services.append(gateway)
            url, api, headers = gateway.url, sluice_api(gateway.url), features.headers
            pids += features.pids
        if design.nginx:
            services.append(BareNginx(url.removeprefix("http://"), workdir / f"{design.name}-nginx"))
            url = services[-1].url
    except BaseException:
        Running(Endpoint("", 0, api), [], services).stop()
        raise
    pids += [service.proc.pid for service in services]
    for pid in pids:
        pin(pid, {PROXY_CPU})
    host, port = url.removeprefix("http://").split(":")
    return Running(Endpoint(host, int(port), api, headers), pids, services)
