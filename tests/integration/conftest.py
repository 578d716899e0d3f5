"""Real processes for the integration suite: the simulator upstream and gunicorn in front of it."""
from __future__ import annotations

import pytest

from bench.processes import Gateway, Simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tmp_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def simulator(tmp_logs):
    """A simulator producing a token every 20 ms."""
    sim = Simulator("--itl", "0.02", log=tmp_logs / "simulator.log")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(simulator, tmp_logs):
    """One gevent worker in front of the simulator."""
    gw = Gateway({"SLUICE_UPSTREAM_URL": simulator.url}, log=tmp_logs / "gateway.log")
    yield gw
    gw.stop()
