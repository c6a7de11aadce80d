"""The scheduler's process: `scriptgate-cron`, forked by the job supervisor
(service/jobs/worker.py), which replaces it when it dies."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from service.schedules.clock import clock_for
from service.schedules.scheduler import Scheduler

PROCESS_NAME = "scriptgate-cron"
SCHEDULER_NICENESS = 5  # as HTTP workers: a job's start should not wait on a busy job


def run_scheduler(settings: Any, run_dir: Any, started_at: float) -> None:
    """The scheduler process's life (forked by the job supervisor)."""
    from service.app import create_app
    from service.runners.limits import die_with_parent, name_process

    name_process(PROCESS_NAME)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    die_with_parent()
    os.nice(SCHEDULER_NICENESS)
    app = create_app(settings, run_dir=run_dir, started_at=started_at)
    rt = app.extensions["scriptgate"]
    rt.log.info("scheduler starting")
    clock = clock_for(settings.schedule_test_clock)
    try:
        Scheduler(rt, clock, fault_file=settings.schedule_test_fault).run(stop)
    finally:
        rt.tracer_provider.force_flush(2000)
