"""gunicorn.conf.py plus a probe for tests: on SIGUSR2 a worker writes how many greenlets it holds.

Only bench/processes.py uses it (`Gateway(..., probe_dir=...)`), so the product has no
debug endpoint or hook: a test sends the signal and reads `<probe_dir>/<worker pid>`.
"""
import os
import runpy

_product = runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "gunicorn.conf.py"))
globals().update({name: value for name, value in _product.items() if not name.startswith("__")})
_product_post_worker_init = _product.get("post_worker_init")


def post_worker_init(worker):
    """The product's hook, then the probe's signal handler (run by gevent in its own greenlet)."""
    if _product_post_worker_init is not None:
        _product_post_worker_init(worker)
    import signal

    import gevent

    gevent.signal_handler(signal.SIGUSR2, _report_greenlets)


def _report_greenlets():
    import gc

    from gevent import Greenlet

    # Every gevent Greenlet not yet finished: one per open client connection, disconnect
    # watchers, anything a request spawned, and this report's own. Raw greenlets are left
    # out: the hub and the resolver's thread pool, which grows with concurrency and stays.
    live = sum(1 for obj in gc.get_objects() if isinstance(obj, Greenlet) and not obj.dead)
    path = os.path.join(os.environ["GATEWAY_PROBE_DIR"], str(os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write(str(live - 1))  # minus this report's own greenlet
    os.replace(path + ".tmp", path)
