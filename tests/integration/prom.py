"""Helpers for the metrics tests: test scripts, reading an exposition, a real Prometheus.

Everything here reads what a user's Prometheus would read: the HTTP exposition of
`/_platform/metrics`, parsed by prometheus_client's own parsers, or Prometheus's query API.
"""

from __future__ import annotations

import http.client
import json
import textwrap
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import WORKER_PID, Gunicorn

API_KEY = "metrics-api-key-0123456789"
ADMIN_KEY = "metrics-admin-key-9876543210"
API = {"X-API-Key": API_KEY}
ADMIN = {"X-Admin-Key": ADMIN_KEY}

# A script that answers with the pid of the worker that ran it: the tests use it to see
# which gunicorn worker served a request.
PID_SCRIPT = """
    import os
    def main(request):
        return {"pid": os.getpid()}
"""

# Holds its worker until every expected worker is inside it at once (a barrier across
# processes through pid files), so N concurrent calls provably land on N workers.
GATHER_SCRIPT = """
    TIMEOUT = 20
    import os, time
    from pathlib import Path
    def main(request):
        folder = Path(request.args["dir"])
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 15
        while len(list(folder.iterdir())) < int(request.args["n"]):
            if time.monotonic() > deadline:
                return {"pid": os.getpid(), "gathered": False}, 500
            time.sleep(0.01)
        return {"pid": os.getpid(), "gathered": True}
"""

# Announces its worker's pid in a file, then stays busy until released or 15 s pass.
HOLD_SCRIPT = """
    TIMEOUT = 20
    import os, time
    from pathlib import Path
    def main(request):
        folder = Path(request.args["dir"])
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 15
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"pid": os.getpid()}
"""

# Each answers with its gunicorn worker's pid, not its runner's.
PID_SCRIPT, GATHER_SCRIPT, HOLD_SCRIPT = (
    script.replace("os.getpid()", WORKER_PID) for script in (PID_SCRIPT, GATHER_SCRIPT, HOLD_SCRIPT)
)

SCRIPTS = {
    "hello.py": PID_SCRIPT,
    "api/pid.py": PID_SCRIPT,
    "api/gather.py": GATHER_SCRIPT,
    "api/hold.py": HOLD_SCRIPT,
    "admin/pid.py": PID_SCRIPT,
    "api/boom.py": """
        def main(request):
            raise RuntimeError("boom")
    """,
    "api/broken.py": """
        import scriptgate_no_such_module_for_tests
        def main(request):
            return "never"
    """,
    "api/loop.py": """
        def main(request):
            while True:
                pass
    """,
    "api/getonly.py": """
        METHODS = ["GET"]
        def main(request):
            return "ok"
    """,
}


def write_scripts(root: Path, files: dict[str, str] | None = None) -> Path:
    """Write a scripts folder (zone sub-folders included) and return it."""
    for zone in ("api", "admin"):
        (root / zone).mkdir(parents=True, exist_ok=True)
    for rel, source in (SCRIPTS if files is None else files).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    return root


def call(server: Gunicorn, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET on a fresh connection with http.client; (status, JSON body or None).

    A third of the cost of requests.get, which matters in loops of hundreds of calls.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(body) if is_json else None


def scrape(server: Gunicorn) -> dict[str, Metric]:
    """The text exposition of /_platform/metrics, parsed, by family name."""
    response = server.get("/_platform/metrics")
    response.raise_for_status()
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def series(families: dict[str, Metric], sample_name: str) -> dict[frozenset, float]:
    """Every sample called `sample_name`, keyed by its label set."""
    family_name = sample_name.removesuffix("_total")
    found: dict[frozenset, float] = {}
    for family in families.values():
        if family.name not in (family_name, sample_name):
            continue
        for sample in family.samples:
            if sample.name == sample_name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def requests_by_series(server: Gunicorn) -> dict[frozenset, float]:
    return series(scrape(server), "scriptgate_requests_total")


def script_requests(counts: dict[frozenset, float]) -> float:
    """Sum of scriptgate_requests_total outside zone="platform" (what health reports)."""
    return sum(v for labels, v in counts.items() if ("zone", "platform") not in labels)


def in_progress(server: Gunicorn, zone: str) -> float:
    gauges = series(scrape(server), "scriptgate_requests_in_progress")
    return gauges.get(frozenset({("zone", zone)}), 0.0)
