"""Gunicorn settings for Sluice: `gunicorn -c gunicorn.conf.py`.

Values come from the same SLUICE_* settings as the app (app/config.py). That module is
loaded by file path, not imported as `app.config`: importing the `app` package here would
import Flask, requests and ssl in the master before gevent patches each worker.
"""
import importlib.util
import os
import resource
import sys

_spec = importlib.util.spec_from_file_location(
    "sluice_settings", os.path.join(os.path.dirname(os.path.abspath(__file__)), "app", "config.py"))
_settings_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _settings_module  # dataclasses look their module up there
_spec.loader.exec_module(_settings_module)
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


def post_worker_init(worker):
    """In each worker, once gevent has patched it: end what still runs before the grace period is over."""
    from app import shutdown  # here, not at the top: the master must not import the app

    shutdown.install(worker.cfg.graceful_timeout)
