"""Gunicorn settings for Sluice: `gunicorn -c gunicorn.conf.py`.

Values come from the same SLUICE_* settings as the app (app/config/). That package (and
app/observe/metrics_dir.py) is loaded by file path, not imported from the `app` package: importing
the package here would import Flask, requests and ssl in the master before gevent patches
each worker.
"""
import importlib.util
import os
import resource
import sys


def _load(name, filename):
    """A standard-library-only module (or package: its __init__.py) of the app, loaded by its file path."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app", filename)
    package = [os.path.dirname(path)] if os.path.basename(path) == "__init__.py" else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_settings_module = _load("sluice_settings", "config/__init__.py")
_metrics_dir = _load("sluice_metrics_dir", "observe/metrics_dir.py")
try:
    _settings = _settings_module.load()
except _settings_module.ConfigError as exc:
    sys.exit(f"sluice: bad configuration: {exc}")

# --- where and how many ---
wsgi_app = "wsgi:app"
bind = [address.strip() for address in _settings["BIND"].split(",")]
workers = _settings["WORKERS"]
worker_class = "gevent"
worker_connections = _settings["WORKER_CONNECTIONS"]
preload_app = False  # each worker imports the app after gevent has patched it

# --- time ---
keepalive = _settings["KEEPALIVE"]
graceful_timeout = _settings["GRACEFUL_TIMEOUT"]
timeout = 30  # worker heartbeat; a gevent worker stays responsive during long generations

# --- logs ---
accesslog = "-"
# gunicorn's default line, less what can carry an API key sent the wrong way: the query
# string (?api_key=...), the user of a Basic Authorization header (`curl -u KEY:`), and the
# Referer (a page's URL, query string included). The path, status and client stay, and the
# request's id last (the X-Request-ID the gateway answered with, as in its JSON log lines).
access_log_format = '%(h)s %(l)s - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s" %({x-request-id}o)s'
errorlog = "-"
loglevel = _settings["LOG_LEVEL"]

# Several masters (tests, a rolling restart) would share ~/.gunicorn/gunicorn.ctl.
control_socket_disable = True

# Each stream holds a client and an upstream socket: raise the open-files limit to fit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_needed = 2 * worker_connections + 256
if _soft != resource.RLIM_INFINITY and _soft < _needed:
    _target = _needed if _hard == resource.RLIM_INFINITY else min(_needed, _hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_target, _hard))

# --- metrics: one folder for every worker's metrics (prometheus-client multiprocess mode) ---
# Set here, in the master, so that only gunicorn's workers inherit it: the embedded vLLM is
# started apart and must not write its own metrics into the folder.


def on_starting(server):
    folder = _settings["METRICS_DIR"] or _metrics_dir.default_folder(_settings["BIND"], os.getpid())
    _metrics_dir.prepare(folder)
    os.environ[_metrics_dir.ENV_VAR] = folder


def child_exit(server, worker):
    _metrics_dir.forget_process(os.environ[_metrics_dir.ENV_VAR], worker.pid)


def on_exit(server):
    if not _settings["METRICS_DIR"]:  # a folder of our own, in the temp folder
        _metrics_dir.remove(os.environ[_metrics_dir.ENV_VAR])


def post_worker_init(worker):
    """In each worker, once gevent has patched it: end what still runs before the grace period is over."""
    from app.relay import shutdown  # here, not at the top: the master must not import the app
    from app.upstream import resolver

    shutdown.install(worker.cfg.graceful_timeout)
    resolver.install()
    # gunicorn says "Booting worker" before the application is loaded; this says it is serving.
    worker.log.info("Worker ready (pid: %s)", worker.pid)


def worker_exit(server, worker):
    """A worker that stops or reloads writes the usage rows it still buffers."""
    from app.ledger import writer  # the worker's own process: the app is already imported there

    writer.flush_all()
