"""A replica watched the shipped way stays visible while slow scripts hold every thread.

docker-compose.yml and the Dockerfile point the health check, and prometheus.yml the
scrapes, at the platform plane (PLATFORM_BIND), not at the port the scripts are served
on. Here one worker with two threads serves the scripts, and two calls waiting at the
gate hold both threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass

import pytest
import requests

from tests import prom
from tests.servers import Gunicorn, free_port, gunicorn, wait_until
from tests.stack.conftest import GATE_SECONDS, Gate, make_scripts

THREADS = 2

pytestmark = pytest.mark.skipif(not prom.PROMETHEUS.exists(), reason="prometheus not installed")


@dataclass(frozen=True)
class Replica:
    server: Gunicorn
    plane: str  # host:port of the platform plane
    prometheus: prom.Prometheus
    gate: Gate

    def hold_every_thread(self) -> AbstractContextManager[list[Future[requests.Response]]]:
        return self.gate.holding(lambda: self.server.get("/held.py"), THREADS)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tmp = tmp_path_factory.mktemp("plane")
    gate = Gate(tmp / "gate")
    plane = f"127.0.0.1:{free_port()}"
    env = {"PLATFORM_BIND": plane, **gate.env}
    scripts = make_scripts(tmp / "scripts")
    extra = ("--threads", str(THREADS))
    with (
        gunicorn(scripts, tmp, workers=1, env=env, extra_args=extra) as server,
        prom.prometheus(tmp, [plane]) as prometheus,
    ):
        # Prometheus applies new targets some seconds after it starts: wait for a scrape.
        up = f'up{{instance="{plane}"}}'
        wait_until(lambda: prometheus.value(up) == 1, timeout=20, what="a first scrape")
        yield Replica(server, plane, prometheus, gate)


def test_health_check_passes_while_scripts_hold_every_worker_thread(replica: Replica) -> None:
    with replica.hold_every_thread():
        # The scripts' port is full: its own /_platform/health waits behind the held calls.
        with pytest.raises(requests.Timeout):
            replica.server.get("/_platform/health", timeout=1)
        health = requests.get(f"http://{replica.plane}/_platform/health", timeout=4)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"


def test_prometheus_sees_the_calls_that_hold_every_worker_thread(replica: Replica) -> None:
    """Scrapes go on during the saturation, so the dashboards show it as it happens."""
    in_flight = 'sum(scriptgate_script_requests_in_progress{script="held.py"})'
    with replica.hold_every_thread():
        wait_until(
            lambda: replica.prometheus.value(in_flight) == THREADS,
            timeout=GATE_SECONDS - 4,
            what="Prometheus to scrape both held calls",
        )
        assert replica.prometheus.value(f'up{{instance="{replica.plane}"}}') == 1
