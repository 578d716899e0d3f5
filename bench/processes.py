"""Start the real processes tests need (gunicorn, the simulator, Redis), wait for them, stop them."""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `ready` until it is true; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            if ready():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout} s")


class Service:
    """A child process in its own process group, stopped with everything it started."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None, user: str | None = None) -> None:
        self.name = name
        self.log_path = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True, user=user)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Signal the process (as systemd's KillMode=mixed does), then kill its group after `timeout`."""
        if self.proc.poll() is None:
            # The leader alone: a gunicorn master stops its own workers. Signalled together,
            # the workers exit first, the master boots a replacement, and that one misses the
            # stop (seen after a HUP: the master then waits out its graceful timeout).
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the service's log, for failure messages."""
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class SimulatedUpstream(Service):
    """A simulated model server from bench/ as a process on a free port, with /sim/stats counters."""

    module = ""
    health_path = ""

    def __init__(self, *args: str, log: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()  # a given port: a replica restarted where it was
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(self.module, [sys.executable, "-m", self.module, "--host", "127.0.0.1",
                                       "--port", str(self.port), *args], log=log)
        wait_until(lambda: requests.get(self.url + self.health_path, timeout=1).ok, 15, self.module, self.proc)

    def stats(self) -> dict:
        """The simulator's live counters (running, cancelled, ...)."""
        return requests.get(self.url + "/sim/stats", timeout=5).json()


class Simulator(SimulatedUpstream):
    """bench/simulator.py as a process: a fast vLLM-shaped upstream with fault injection."""

    module, health_path = "bench.simulator", "/health"

    def reset(self) -> None:
        requests.post(self.url + "/sim/reset", timeout=5)


class OllamaSimulator(SimulatedUpstream):
    """bench/ollama_simulator.py as a process: Ollama's native API, NDJSON streams."""

    module, health_path = "bench.ollama_simulator", "/api/version"


class Gateway(Service):
    """Sluice under real gunicorn with gevent workers, as deployed: `gunicorn -c gunicorn.conf.py`."""

    def __init__(self, settings: dict[str, str], log: Path | None = None, timeout: float = 30,
                 probe_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"SLUICE_BIND": f"127.0.0.1:{self.port}", "SLUICE_WORKERS": "1", **settings}
        if "SLUICE_DATABASE_URL" not in settings:  # a database of its own, beside its log, not the instance folder's
            folder = log.parent if log else Path(tempfile.mkdtemp(prefix="sluice-db-"))
            env["SLUICE_DATABASE_URL"] = f"sqlite:///{folder / f'sluice-{self.port}.db'}"
        config = "gunicorn.conf.py"
        if probe_dir is not None:  # the same settings plus a greenlet probe (bench/worker_probe.py)
            config, env["GATEWAY_PROBE_DIR"] = "bench/gunicorn_probe.conf.py", str(probe_dir)
        self.probe_dir = probe_dir
        logged_before = log.stat().st_size if log and log.exists() else 0
        super().__init__("gateway", [str(BIN / "gunicorn"), "-c", config], env=env, log=log)
        wait_until(lambda: requests.get(self.url + "/healthz", timeout=1).ok, timeout, "gateway", self.proc)
        # The first answer proves one worker is up; a test that needs several must not race the others' boot.
        workers = int(env["SLUICE_WORKERS"])
        if log and workers > 1 and env.get("SLUICE_LOG_LEVEL", "info").lower() in ("debug", "info"):
            wait_until(lambda: log.read_bytes()[logged_before:].count(b"Worker ready (pid:") >= workers, timeout,
                       "every worker", self.proc)


class GeventApp(Service):
    """A small relay of the benchmark (the seed proxy, the floors) as the guide runs it: gunicorn -k gevent -w 1."""

    def __init__(self, name: str, app: str, upstream_url: str, log: Path | None = None, timeout: float = 30) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, [str(BIN / "gunicorn"), "-c", "bench/seed/gunicorn.conf.py",
                                "-b", f"127.0.0.1:{self.port}", app], env={"VLLM_URL": upstream_url}, log=log)
        # These relays have no health route: any HTTP answer (405 to a GET) means it is up.
        wait_until(lambda: requests.get(self.url + "/v1/completions", timeout=1).status_code > 0, timeout,
                   name, self.proc)


class Redis(Service):
    """A throwaway redis-server on a free loopback port: no persistence, nothing left on disk."""

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], log=log)
        self.client = redis.Redis.from_url(self.url, socket_timeout=5)
        wait_until(self._answers, 10, "redis", self.proc)

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False



class Postgres:
    """A throwaway PostgreSQL cluster (initdb, then postgres) on a free loopback port, in a folder of its own.

    PostgreSQL refuses to run as root: as root (CI, containers) it runs as the `postgres` user
    that Debian's package creates. `stop` and `start` keep the data: a database that goes away
    and comes back.
    """

    # Debian's server binaries are off the PATH, in a folder per major version: the newest one.
    BIN = Path(os.environ.get("SLUICE_PG_BIN") or max(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), default="/usr/bin"))

    def __init__(self, log: Path | None = None) -> None:
        import pwd
        import shutil

        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="sluice-pg-"))  # in /tmp: reachable by that user
        self.log = log
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self._remove = lambda: shutil.rmtree(self.folder, ignore_errors=True)
        subprocess.run([str(self.BIN / "initdb"), "-D", str(self.folder / "data"), "-U", "sluice", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, user=self.user, cwd="/")
        self.url = f"postgresql://sluice@127.0.0.1:{self.port}/postgres"
        self.server: Service | None = None
        self.start()

    def start(self) -> None:
        """Start the server on its port and data (again, after `stop`)."""
        self.server = Service("postgres", [str(self.BIN / "postgres"), "-D", str(self.folder / "data"),
                                           "-p", str(self.port), "-k", str(self.folder),
                                           "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                              log=self.log, user=self.user)
        wait_until(self._answers, 30, "postgres", self.server.proc)

    def stop(self) -> None:
        """Stop the server (fast shutdown: connections are cut), keeping its data."""
        if self.server is not None:
            self.server.stop(signal.SIGINT, timeout=30)
            self.server = None

    def remove(self) -> None:
        """Stop, and delete the cluster."""
        self.stop()
        self._remove()

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.Error:
            return False
