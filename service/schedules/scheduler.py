"""The scheduler: finds scripts' schedules and starts each scheduled time's job once.

Where it runs: one process per job supervisor (`scriptgate-cron`, forked beside the job
workers by service/jobs/worker.py), so every server that runs jobs, and every
`scriptgate jobs` container, runs one. Several is the normal case, not a fault: each
scheduled time is claimed in the shared store (store.py) before its job is created, so
one of them starts it and the others do nothing. Not in gunicorn's workers (there are
several per server, recycled at will) and not in the master (it must not import or run
anything a script wrote).

A thread looks at the scripts folder every SCAN_SECONDS (added, edited and deleted
scripts change the schedules, no restart; a script whose import hangs holds up that
thread, never a schedule's time); the main loop claims each schedule whose next time has
come, then runs, skips or records it as missed:
- a run whose previous run of the same schedule is still queued or running is skipped
  (SCHEDULE_OVERLAP = True lets it start);
- a paused script's time is claimed and skipped;
- after downtime the latest missed time runs if it is within SCHEDULE_CATCHUP, and the
  older ones are counted as missed, never run.

Time is the clock's (clock.py), which a test drives; the rest is real.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from service.jobs.store import FINISHED, QUEUED, RUNNING, SCHEDULE, SUCCEEDED, Job
from service.observability.logs import redact_query
from service.observability.tracing import span_ids
from service.schedules.backends import open_store
from service.schedules.clock import Clock
from service.schedules.discovery import MARKED, Marked, Scheduled, discover
from service.schedules.metrics import ScheduleMetrics, schedule_metrics
from service.schedules.store import MISSED, SKIPPED, STARTED, ScheduleStore
from service.schedules.times import count_between, latest_time, next_time

if TYPE_CHECKING:
    from service.runtime import Runtime

CALLER = "schedule"  # the `caller` of a scheduled job: no key started it
SCAN_SECONDS = 2.0  # how often the scripts folder is looked at again (real time)


@dataclass
class Entry:
    """One schedule as the scheduler holds it between steps."""

    found: Scheduled
    cron: str
    tz: str
    next_at: float = 0.0

    @property
    def label(self) -> tuple[str, str, str]:
        return self.found.zone, self.found.script, self.cron


@dataclass
class Scheduler:
    rt: Runtime
    clock: Clock
    store: ScheduleStore | None = None  # default: beside rt's job store
    marked: Marked = MARKED
    log: logging.Logger | Any = None
    metrics: ScheduleMetrics | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # job -> label
    _first_scan: bool = True
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = open_store(self.rt.jobs)
        if self.log is None:
            self.log = self.rt.log
        if self.metrics is None and self.rt.metrics is not None:
            self.metrics = schedule_metrics(self.rt.metrics)

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: the folder scanned in a thread of its own (an import that hangs
        delays no schedule: the scan waits for it, firing does not), and due times fired
        here, waiting on the clock for the next one."""
        scanner = threading.Thread(
            target=self._scan_loop, args=(stop,), name="scriptgate-schedule-scan", daemon=True
        )
        scanner.start()
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # a store outage: logged, tried again next step
                self.log.error("scheduler step failed: %s", exc)
            now = self.clock.now()
            due = min((e.next_at for e in list(self.entries.values())), default=now + SCAN_SECONDS)
            self.clock.wait(stop, min(max(0.0, due - now), SCAN_SECONDS))
        scanner.join(timeout=SCAN_SECONDS)

    def _scan_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.scan()
            except Exception as exc:  # a store outage or a platform bug: again next scan
                self.log.error("scheduler step failed: %s", exc)
            stop.wait(SCAN_SECONDS)

    def step(self) -> None:
        """Fire every schedule whose time has come."""
        now = self.clock.now()
        due = [e for e in list(self.entries.values()) if e.next_at <= now]
        if not due:
            return
        assert self.store is not None
        paused = self.store.paused()
        for entry in due:
            self.fire(entry, now, (entry.found.zone, entry.found.script) in paused)

    def scan(self) -> None:
        """Look at the scripts again: new schedules registered, removed ones forgotten."""
        assert self.store is not None
        now = self.clock.now()
        current: dict[str, Entry] = {}
        for found in discover(self.rt, self.marked):
            if found.spec is None:
                continue
            tz = found.spec.timezone or self.rt.settings.schedule_tz
            for cron in found.spec.crons:
                key = json.dumps([found.zone, found.script, cron, tz])
                old = self.entries.get(key)
                if old is not None:
                    old.found = found  # SCHEDULE_PARAMS, OVERLAP... may have changed
                    current[key] = old
                    continue
                state = self.store.register(found.zone, found.script, cron, now)
                entry = Entry(found, cron, tz, next_time(cron, tz, state.last_at))
                self.store.set_next(found.zone, found.script, cron, entry.next_at)
                current[key] = entry
                if self.metrics is not None:
                    self.metrics.known(found.zone, found.script)
                if self._first_scan and state.last_job and state.last_outcome == STARTED:
                    with self._pending_lock:
                        self.pending[state.last_job] = entry.label
        wanted = {e.label for e in current.values()}
        for key, entry in self.entries.items():
            if key not in current and entry.label not in wanted:
                self.store.forget(*entry.label)
                self.log.info("schedule removed", extra=self._fields(entry))
        for state in self.store.states():  # removed while no scheduler was running
            label = (state.zone, state.script, state.cron)
            if label not in wanted and label not in {e.label for e in self.entries.values()}:
                self.store.forget(*label)
                self.log.info(
                    "schedule removed",
                    extra={"zone": state.zone, "script": state.script, "schedule": state.cron},
                )
        for key in current.keys() - self.entries.keys():
            self.log.info("schedule found", extra=self._fields(current[key]))
        self.entries = current
        self._first_scan = False
        self.follow_jobs()

    def fire(self, entry: Entry, now: float, paused: bool) -> None:
        """Claim the latest due time; run it, skip it or record it missed."""
        assert self.store is not None
        zone, script, cron = entry.label
        spec = entry.found.spec
        assert spec is not None
        due = latest_time(cron, entry.tz, now)
        entry.next_at = next_time(cron, entry.tz, max(due, now))
        claim = self.store.claim(zone, script, cron, due, now)
        if claim is None:  # another scheduler has it, or it was handled already
            return
        missed = count_between(cron, entry.tz, claim.previous, due)
        catchup = spec.catchup if spec.catchup is not None else self.rt.settings.schedule_catchup
        if now - due > catchup:
            missed += 1
            self.outcome(entry, due, MISSED, None, count=missed, late_s=round(now - due, 3))
            return
        if missed:
            self.log.warning(
                "schedule",
                extra={**self._fields(entry), "outcome": MISSED, "count": missed,
                       "since": _iso(claim.previous)},
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.runs.labels(zone, script, MISSED).inc(missed)
        if paused:
            self.outcome(entry, due, SKIPPED, None, reason="paused")
            return
        if not spec.overlap and claim.last_job:
            last = self.rt.jobs.store.get(claim.last_job, time.time())
            if last is not None and last.state in (QUEUED, RUNNING):
                self.outcome(entry, due, SKIPPED, None, reason="overlap", running=last.id)
                return
        job_id = self.start_job(entry, due)
        self.outcome(entry, due, STARTED, job_id)

    def start_job(self, entry: Entry, due: float) -> str:
        found, spec = entry.found, entry.found.spec
        assert spec is not None
        job_id = secrets.token_urlsafe(24)
        with self.rt.tracer.start_as_current_span(
            f"schedule {found.url}", kind=SpanKind.PRODUCER
        ) as span:
            span.set_attributes({"scriptgate.job_id": job_id, "scriptgate.schedule": entry.cron})
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            job = Job(
                id=job_id,
                state=QUEUED,
                zone=found.zone,
                script=found.script,
                method=spec.method,
                path=found.url,
                owner="",
                trace_id=span_ids(span)[0],
                traceparent=carrier.get("traceparent", ""),
                created_at=time.time(),
                caller=CALLER,
                trigger=SCHEDULE,
                attempts=1 + found.retries,
                query=json.dumps(redact_query(parse_qs(spec.query, keep_blank_values=True))),
            )
            self.rt.jobs.submit(job, spec.snapshot(found.url))
        if self.rt.jobs.metrics is not None:
            self.rt.jobs.metrics.entered(found.zone, found.script, QUEUED)
        with self._pending_lock:
            self.pending[job_id] = entry.label
        return job_id

    def outcome(
        self,
        entry: Entry,
        due: float,
        outcome: str,
        job_id: str | None,
        count: int = 1,
        **extra: Any,
    ) -> None:
        assert self.store is not None
        self.store.record(*entry.label, due, outcome, job_id, entry.next_at)
        if self.metrics is not None:
            self.metrics.runs.labels(entry.found.zone, entry.found.script, outcome).inc(count)
        fields = {**self._fields(entry), "outcome": outcome, "scheduled_at": _iso(due)}
        if job_id is not None:
            fields["job_id"] = job_id
        if count != 1:
            fields["count"] = count
        level = logging.WARNING if outcome == MISSED else logging.INFO
        self.log.log(level, "schedule", extra={**fields, **extra})

    def follow_jobs(self) -> None:
        """The started jobs that finished since: last success and failures in a row."""
        assert self.store is not None
        with self._pending_lock:
            following = list(self.pending.items())
        for job_id, label in following:
            job = self.rt.jobs.store.get(job_id, time.time())
            if job is None or job.state in FINISHED:
                with self._pending_lock:
                    self.pending.pop(job_id, None)
            if job is not None and job.state in FINISHED:
                at = job.finished_at or time.time()
                self.store.finished(*label, job_id, at, job.state == SUCCEEDED)

    @staticmethod
    def _fields(entry: Entry) -> dict[str, Any]:
        return {
            "zone": entry.found.zone,
            "script": entry.found.script,
            "schedule": entry.cron,
            "timezone": entry.tz,
            "caller": CALLER,
        }


def _iso(moment: float) -> str:
    from service.jobs.http import iso_time

    return iso_time(moment) or ""


def run_scheduler(settings: Any, run_dir: Any, started_at: float) -> None:
    """The scheduler process's life (forked by the job supervisor)."""
    import os
    import signal

    from service.app import create_app
    from service.runners.limits import die_with_parent, name_process
    from service.schedules.clock import clock_for

    name_process(PROCESS_NAME)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    die_with_parent()
    os.nice(SCHEDULER_NICENESS)
    app = create_app(settings, run_dir=run_dir, started_at=started_at)
    rt = app.extensions["scriptgate"]
    rt.log.info("scheduler starting")
    try:
        Scheduler(rt, clock_for(settings.schedule_test_clock)).run(stop)
    finally:
        rt.tracer_provider.force_flush(2000)


PROCESS_NAME = "scriptgate-cron"
SCHEDULER_NICENESS = 5  # as HTTP workers: a job's start should not wait on a busy job
