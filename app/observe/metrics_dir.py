"""The folder where gunicorn workers keep their metrics (prometheus-client's multiprocess mode).

Standard library only: gunicorn.conf.py runs this in the gunicorn master, where importing
prometheus_client would import ssl before gevent patches each worker (see gunicorn.conf.py).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"


def default_folder(bind: str, pid: int) -> str:
    """A folder of its own for this gunicorn master, so gateways running side by side never mix."""
    safe_bind = re.sub(r"[^A-Za-z0-9._-]+", "_", bind)
    return os.path.join(tempfile.gettempdir(), f"sluice-metrics-{safe_bind}-{pid}")


def prepare(folder: str) -> None:
    """Create the folder, emptied: files of an earlier run would be added to this one's counts."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.endswith(".db") and os.path.isfile(path):
                os.remove(path)
    os.makedirs(folder, exist_ok=True)


def forget_process(folder: str, pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, waiting); its counters stay in the totals.

    The same files prometheus_client.multiprocess.mark_process_dead removes, without
    importing prometheus_client into the master.
    """
    for path in glob.glob(os.path.join(folder, f"gauge_live*_{pid}.db")):
        os.remove(path)


def remove(folder: str) -> None:
    """Delete a folder this master created."""
    shutil.rmtree(folder, ignore_errors=True)
