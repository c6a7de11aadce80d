"""Real servers for tests: free ports, readiness by polling with a deadline, always stopped.

Starting and stopping servers lives in bench/procs.py, shared with the benchmarks; this
adds what only tests need: finding a request's log record by its trace id.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.procs import (
    BIN,
    REPO,
    SCRIPTGATE,
    WORKER_PID,
    Gunicorn,
    alive,
    free_port,
    gunicorn,
    redis_server,
    stop_process,
    wait_until,
)

__all__ = [
    "BIN",
    "REPO",
    "SCRIPTGATE",
    "WORKER_PID",
    "Gunicorn",
    "alive",
    "copy_scripts",
    "free_port",
    "gunicorn",
    "log_records",
    "redis_server",
    "request_record",
    "stays_the_same",
    "stop_process",
    "wait_until",
]


def log_records(*servers: Gunicorn) -> list[dict]:
    """Every JSON record the servers have written to their LOG_FILE so far."""
    records = []
    for server in servers:
        if server.log_file.exists():
            records += [json.loads(line) for line in server.log_file.read_text().splitlines()]
    return records


def request_record(trace_id: str, *servers: Gunicorn) -> dict:
    """The platform's request log record for one trace id (waits for the write).

    Found by trace id, never by position: health checks and other requests write
    records of their own, before and after the one a test is looking for.
    """

    def find() -> dict | None:
        for record in log_records(*servers):
            if record.get("message") == "request" and record.get("trace_id") == trace_id:
                return record
        return None

    return wait_until(find, timeout=5, what=f"request log record of trace {trace_id}")


def copy_scripts(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def stays_the_same(path: Path, seconds: float = 0.5) -> bool:
    """Does the file keep its size for `seconds`? How a test sees that a script which
    appends every few milliseconds has really stopped: absence needs a window."""
    size = path.stat().st_size
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.stat().st_size != size:
            return False
        time.sleep(0.02)
    return True
