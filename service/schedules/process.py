"""The scheduler's process (`scriptgate-cron`, forked by the job supervisor), and the
fault point tests use to kill or stop it at the worst moment.

SCHEDULE_TEST_FAULT (tests only, config.py) names a file; while none is there nothing
happens. A test writes `<kill|stop> <claim|job>` into it: the next scheduler to pass
that point (right after claiming a time; right after creating its job, before the
outcome) removes the file, so it strikes once, and sends itself SIGKILL (a crash: the
supervisor starts a new scheduler) or SIGSTOP (a scheduler that is slow, not dead,
until the test sends SIGCONT).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

PROCESS_NAME = "scriptgate-cron"
SCHEDULER_NICENESS = 5  # as HTTP workers: a job's start should not wait on a busy job
FAULT_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
FAULT_POINTS = ("claim", "job")


def fault_point(fault_file: Path | None, point: str) -> None:
    """Kill or stop this process here when SCHEDULE_TEST_FAULT asks for it, once."""
    if fault_file is None:
        return
    try:
        words = fault_file.read_text().split()
    except OSError:
        return
    if len(words) != 2 or words[1] != point or words[0] not in FAULT_SIGNALS:
        return
    try:
        fault_file.unlink()  # of two schedulers here at once, the one that removes it
    except OSError:
        return
    os.kill(os.getpid(), FAULT_SIGNALS[words[0]])


def run_scheduler(settings: Any, run_dir: Any, started_at: float) -> None:
    """The scheduler process's life (forked by the job supervisor)."""
    from service.app import create_app
    from service.runners.limits import die_with_parent, name_process
    from service.schedules.clock import clock_for
    from service.schedules.scheduler import Scheduler

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
