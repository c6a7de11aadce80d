"""Job worker processes: started and stopped with the server, replaced when one dies.

`scriptgate serve` forks the supervisor from gunicorn's master once the server is ready,
as it does the platform plane; `scriptgate jobs` runs the supervisor in the foreground,
so job workers can run (and scale) apart from the HTTP servers. The supervisor forks
JOB_WORKERS job workers. Each runs huey's own worker loop (take a job id off the queue,
run it: execute.py), one job at a time, at a lower CPU priority than HTTP workers. It
also forks the scheduler (schedules/process.py), replaced like a worker when it dies.

The supervisor, and nothing else, also:
- replaces a worker that died, after a delay that grows while workers keep dying young
  (so a crash loop costs a restart every MAX_RESTART_DELAY, not a busy loop), and marks
  the job it held `failed`;
- folds a dead worker's metrics files (multiproc.worker_exited), as gunicorn's master
  does for HTTP workers;
- every SWEEP_SECONDS removes jobs past JOB_RETENTION and fails running jobs whose
  heartbeat stopped (their whole server was lost);
- when it starts, fails at once the running jobs of job workers of this host that are
  gone (a server killed with SIGKILL, or the machine restarted): they would otherwise
  wait LOST_AFTER_SECONDS for the heartbeat check;
- on SIGTERM or SIGINT stops the workers: no new job; a running one has
  STOP_GRACE_SECONDS to finish, then is interrupted and reported `failed`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from service.config import Settings
from service.jobs.doorbell import WakeOnBell, queue_bell
from service.jobs.execute import JobExecutor
from service.jobs.http import log_fields
from service.jobs.metrics import JobMetrics
from service.jobs.queue import JobQueue
from service.jobs.store import FAILED, Ending
from service.jobs.watch import STOP_GRACE_SECONDS, Shutdown
from service.observability import multiproc
from service.observability.logs import build_logger
from service.processes import fork_from_master
from service.runners.limits import die_with_parent, name_process
from service.schedules.process import run_scheduler

WORKER_NICENESS = 10  # below HTTP workers (5): a job never slows a call down
SWEEP_SECONDS = 30.0
RELEASE_SECONDS = 0.5  # how often a worker queues the retries that are due
LOST_AFTER_SECONDS = 60.0  # twelve missed heartbeats
YOUNG_SECONDS = 10.0  # a worker that dies younger than this counts toward the backoff
MAX_RESTART_DELAY = 30.0
# The supervisor's own stop: the workers' grace, the interrupt's, and a margin.
STOP_SECONDS = STOP_GRACE_SECONDS + 5.0
# huey's worker loop polls SQLite: from every 50 ms after a job up to every 0.5 s idle;
# a job queued meanwhile rings the doorbell (doorbell.py), which ends the wait at once.
POLL_MIN, POLL_MAX, POLL_BACKOFF = 0.05, 0.5, 1.15
SUPERVISOR_NAME, WORKER_NAME = "scriptgate-jobs", "scriptgate-job"  # /proc/PID/comm
SCHEDULER_SLOT = -1  # the slot of the scheduler process, supervised as a worker is


def start(server: Any, listeners: list[Any]) -> int:
    """Fork the supervisor from gunicorn's master (server.py's when_ready)."""
    supervisor = JobSupervisor(
        server.settings, server.run_dir, server.started_at, server.metrics_dir
    )
    return fork_from_master(listeners, supervisor.run, SUPERVISOR_NAME)


def worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


class JobSupervisor:
    def __init__(self, settings: Settings, run_dir: Path, started_at: float, metrics_dir: Any):
        self.settings = settings
        self.run_dir = run_dir
        self.started_at = started_at
        self.metrics_path: Path | None = metrics_dir.path if metrics_dir is not None else None
        self.stopping = threading.Event()
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
        self.due: dict[int, float] = {}  # slot -> when to start it
        self.young_deaths: dict[int, int] = {}  # slot -> deaths in a row, each young
        self.log = logging.getLogger("scriptgate")
        self.queue: JobQueue | None = None
        self.metrics: JobMetrics | None = None

    def run(self) -> None:
        """The supervisor's life, in its own process; returns once every worker is gone."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        s = self.settings
        self.log = build_logger(s.log_level, s.log_file, s.log_stdout)
        self.queue = JobQueue(s)
        self.metrics = JobMetrics(None) if s.metrics_enabled else None
        self.due = dict.fromkeys(range(s.job_workers), 0.0)
        self.due[SCHEDULER_SLOT] = 0.0  # the scheduler: one per supervisor (schedules/)
        self.log.info("job workers starting", extra={"job_workers": s.job_workers})
        self.fail_orphans()
        next_sweep = 0.0
        while not self.stopping.is_set():
            self.reap()
            now = time.monotonic()
            for slot, when in list(self.due.items()):
                if when <= now:
                    del self.due[slot]
                    self.spawn(slot)
            if now >= next_sweep:
                next_sweep = now + SWEEP_SECONDS
                self.sweep()
            self.stopping.wait(0.5)
        self.stop_workers()

    def spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = (slot, time.monotonic())
            return
        code = 0
        try:
            life = run_scheduler if slot == SCHEDULER_SLOT else run_worker
            life(self.settings, self.run_dir, self.started_at)
        except BaseException:
            logging.getLogger("scriptgate").exception("job worker failed")
            code = 1
        finally:
            os._exit(code)

    def reap(self) -> None:
        """Collect dead workers: fold their metrics, fail their job, plan a restart."""
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if pid not in self.workers:  # another child (`scriptgate jobs`'s plane): not ours
                continue
            slot, born = self.workers.pop(pid)
            if self.metrics_path is not None:
                multiproc.worker_exited(pid, self.metrics_path)
            self.fail_lost(f"the job worker died ({_exit_text(status)})", worker_id(pid), 0.0)
            if self.stopping.is_set():
                continue
            young = time.monotonic() - born < YOUNG_SECONDS
            deaths = self.young_deaths[slot] = self.young_deaths.get(slot, 0) + 1 if young else 0
            delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (deaths - 1)) if deaths else 0.0
            self.due[slot] = time.monotonic() + delay
            self.log.warning(
                "job worker %s exited (%s); restarting in %.1f s",
                pid,
                _exit_text(status),
                delay,
                extra={"pid": pid},
            )

    def fail_lost(self, error: str, worker: str | None, beat_before: float) -> None:
        assert self.queue is not None
        try:
            ending = Ending(FAILED, time.time(), self.settings.job_retention, error)
            lost = self.queue.store.fail_lost(ending, worker, beat_before)
        except Exception as exc:
            self.log.error("job store did not answer: %s", exc)
            return
        for job in lost:
            if self.metrics is not None:
                self.metrics.entered(job.zone, job.script, FAILED)
            self.log.error(f"job failed: {error}", extra=log_fields(job))

    def fail_orphans(self) -> None:
        """Running jobs held by a job worker of this host that no longer runs. A pid
        that now belongs to another process (reused) is not a job worker by its name."""
        assert self.queue is not None
        host = socket.gethostname() + ":"
        try:
            held = self.queue.store.running_ids(None, float("inf"))
            jobs = [self.queue.store.get(job_id, time.time()) for job_id in held]
        except Exception as exc:
            self.log.error("job store did not answer: %s", exc)
            return
        for job in jobs:
            worker = job.worker if job is not None else None
            if worker is None or not worker.startswith(host):
                continue
            pid = worker[len(host) :]
            if pid.isdigit() and not _is_job_worker(int(pid)):
                self.fail_lost("lost: its server stopped while it ran", worker, 0.0)

    def sweep(self) -> None:
        assert self.queue is not None
        now = time.time()
        try:
            removed = self.queue.store.sweep(now)
        except Exception as exc:
            self.log.error("job store did not answer: %s", exc)
            return
        if removed:
            self.log.info("removed %d jobs past JOB_RETENTION", removed)
        self.fail_lost("lost: its job worker stopped answering", None, now - LOST_AFTER_SECONDS)

    def stop_workers(self) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS + 2.0
        while self.workers and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while self.workers and time.monotonic() < end:
            self.reap()
            time.sleep(0.05)


def _is_job_worker(pid: int) -> bool:
    """A live job worker (a killed one may linger as a zombie until it is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition("(")[2].rpartition(")")
    return name == WORKER_NAME and rest.split()[:1] != ["Z"]


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def run_worker(settings: Settings, run_dir: Path, started_at: float) -> None:
    """One job worker's life, in its own process."""
    from huey.consumer import Worker

    from service.app import create_app

    name_process(WORKER_NAME)
    shutdown = Shutdown()
    idle = WakeOnBell(shutdown.event, queue_bell(settings))  # huey's idle sleep, rung awake

    def stop(*_: Any) -> None:
        shutdown.request()
        idle.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    die_with_parent()  # gone with the supervisor
    os.nice(WORKER_NICENESS)
    app = create_app(settings, run_dir=run_dir, started_at=started_at)
    app.extensions["scriptgate"].runners.warm()
    rt = app.extensions["scriptgate"]
    huey_log = logging.getLogger("huey")  # its warnings as our JSON lines
    huey_log.handlers, huey_log.propagate = list(rt.log.handlers), False
    huey_log.setLevel(logging.WARNING)
    rt.jobs.serve(JobExecutor(app, worker_id(os.getpid()), shutdown))
    workers = rt.jobs.metrics.workers if rt.jobs.metrics is not None else None
    if workers is not None:
        workers.inc()
    loop = Worker(
        huey=rt.jobs.huey,
        stop_flag=idle,
        default_delay=POLL_MIN,
        max_delay=POLL_MAX,
        backoff=POLL_BACKOFF,
    )
    next_release = 0.0
    try:
        while not shutdown.event.is_set():
            loop.loop()
            if time.monotonic() >= next_release:  # retries whose delay is over
                next_release = time.monotonic() + RELEASE_SECONDS
                try:
                    rt.jobs.release_due()
                except Exception as exc:
                    rt.log.warning("job schedule not read: %s", exc)
    finally:
        if workers is not None:
            workers.dec()
        rt.tracer_provider.force_flush(2000)
