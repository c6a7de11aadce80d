"""`scriptgate jobs`: job workers without an HTTP server, so they scale on their own.

It shares the queue with the HTTP servers through JOB_BROKER_URL (Redis), or through
JOB_DATA_DIR on the same machine. With `--platform-bind` it also serves /_platform/*
(health, and the metrics of its job workers for Prometheus) from a plane process.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from service import processes
from service.config import ConfigError, Settings
from service.observability import multiproc
from service.platform import plane


def run_jobs(settings: Settings) -> int:
    """Run the supervisor in this process until SIGTERM or SIGINT."""
    from service.server import prepare

    if settings.job_workers < 1:
        raise ConfigError("JOB_WORKERS", "scriptgate jobs needs at least 1 job worker")
    listener: socket.socket | None = None
    if settings.platform_bind:
        listener = processes.bind(settings.platform_bind)
    settings, metrics_dir = prepare(settings)
    from service.jobs.worker import JobSupervisor

    run_dir = Path(tempfile.mkdtemp(prefix="scriptgate-run-"))
    started_at = time.time()
    plane_pid = None
    try:
        if listener is not None:
            owner = SimpleNamespace(
                settings=settings, run_dir=run_dir, started_at=started_at, plane_socket=listener
            )
            plane_pid = plane.start(owner, [])
            listener.close()
        JobSupervisor(settings, run_dir, started_at, metrics_dir).run()
    finally:
        if plane_pid is not None:
            processes.stop(plane_pid)
            if metrics_dir is not None:
                multiproc.worker_exited(plane_pid, metrics_dir.path)
        shutil.rmtree(run_dir, ignore_errors=True)
        if metrics_dir is not None:
            metrics_dir.cleanup()
    return 0
