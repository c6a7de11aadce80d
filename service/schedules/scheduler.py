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
A claim whose outcome was not recorded within its lease (store.CLAIM_LEASE_SECONDS: its
scheduler was killed between claim and job) is taken over and settled by the same rules,
as any other claim; its job carries the scheduled time's idempotency key (runs.py), so
a first holder that was only slow gets the same job, and only the holder of the claim
records, logs and counts the outcome.

Time is the clock's (clock.py), which a test drives; the rest is real.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.jobs.store import FINISHED, SUCCEEDED
from service.schedules.backends import open_store
from service.schedules.clock import Clock
from service.schedules.discovery import MARKED, Marked, Scheduled, discover
from service.schedules.faults import fault_point
from service.schedules.metrics import ScheduleMetrics, schedule_metrics
from service.schedules.runs import iso, log_fields, made_job, start_job, still_on
from service.schedules.store import (
    CLAIM_LEASE_SECONDS,
    MISSED,
    SKIPPED,
    STARTED,
    Claim,
    ScheduleStore,
)
from service.schedules.times import count_between, latest_time, next_time

if TYPE_CHECKING:
    from service.runtime import Runtime

SCAN_SECONDS = 2.0  # how often the scripts folder is looked at again (real time)
SWEEP_SECONDS = 3600.0  # claims are kept CLAIM_DAYS: removing them hourly is plenty


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
    fault_file: Path | None = None  # SCHEDULE_TEST_FAULT (faults.py)
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
        next_sweep = 0.0
        while not stop.is_set():
            try:
                self.scan()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_SECONDS
                    self.sweep()
            except Exception as exc:  # a store outage or a platform bug: again next scan
                self.log.error("scheduler step failed: %s", exc)
            stop.wait(SCAN_SECONDS)

    def sweep(self) -> int:
        """Remove the claims older than CLAIM_DAYS (and open ones as old: their
        schedule is gone); how many."""
        assert self.store is not None
        return self.store.sweep(self.clock.now())

    def step(self) -> None:
        """Settle the claims left open past their lease, then fire every schedule whose
        time has come."""
        now = self.clock.now()
        assert self.store is not None
        stale = self.store.open_claims(now - CLAIM_LEASE_SECONDS)  # a read of a tiny table
        due = [e for e in list(self.entries.values()) if e.next_at <= now]
        if not due and not stale:
            return
        paused = self.store.paused()
        known = {e.label: e for e in list(self.entries.values())}
        for left in stale:  # a schedule this scheduler does not know: left to one that does
            entry = known.get(left.label)
            claim = self.store.take_over(left, now) if entry is not None else None
            if entry is not None and claim is not None:
                self.settle(entry, claim, now, (claim.zone, claim.script) in paused)
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
        """Claim the latest due time and settle it."""
        assert self.store is not None
        due = latest_time(entry.cron, entry.tz, now)
        entry.next_at = next_time(entry.cron, entry.tz, max(due, now))
        claim = self.store.claim(*entry.label, due, now)
        if claim is None:  # another scheduler has it, or it was handled already
            return
        fault_point(self.fault_file, "claim")
        self.settle(entry, claim, now, paused)

    def settle(self, entry: Entry, claim: Claim, now: float, paused: bool) -> None:
        """Run a claimed time, skip it or record it missed. A claim taken over is
        `started` when its holder created the job before it died, and missed once a
        later time of its schedule has come: after downtime only the latest time runs."""
        spec = entry.found.spec
        assert spec is not None
        due = claim.due
        earlier = count_between(entry.cron, entry.tz, claim.previous, due)
        catchup = spec.catchup if spec.catchup is not None else self.rt.settings.schedule_catchup
        made = made_job(self.rt, entry.found, entry.cron, due) if claim.recovered else None
        if made is not None:
            self.outcome(entry, claim, STARTED, made, earlier)
        elif claim.recovered and latest_time(entry.cron, entry.tz, now) > due:
            self.outcome(entry, claim, MISSED, None, earlier, reason="superseded")
        elif now - due > catchup:
            self.outcome(entry, claim, MISSED, None, earlier, late_s=round(now - due, 3))
        elif paused:
            self.outcome(entry, claim, SKIPPED, None, earlier, reason="paused")
        elif not spec.overlap and claim.last_job and still_on(self.rt, claim.last_job):
            self.outcome(
                entry, claim, SKIPPED, None, earlier, reason="overlap", running=claim.last_job
            )
        else:
            job_id, _ = start_job(self.rt, entry.found, entry.cron, due)
            with self._pending_lock:
                self.pending[job_id] = entry.label
            fault_point(self.fault_file, "job")
            self.outcome(entry, claim, STARTED, job_id, earlier)

    def outcome(
        self,
        entry: Entry,
        claim: Claim,
        outcome: str,
        job_id: str | None,
        earlier: int,
        **extra: Any,
    ) -> None:
        """Record what became of the claimed time; if this scheduler still held the
        claim, log and count it, and the `earlier` times missed before it (one line
        with the time itself when it is missed too)."""
        assert self.store is not None
        fields = {**self._fields(entry), "scheduled_at": iso(claim.due)}
        if claim.recovered:
            extra["recovered"] = True
        if not self.store.record(claim, outcome, job_id, entry.next_at):
            self.log.warning(
                "schedule claim taken over",
                extra={**fields, "job_id": job_id, "claimed_at": iso(claim.claimed_at)},
            )
            return
        zone, script = entry.found.zone, entry.found.script
        count = 1 + earlier if outcome == MISSED else 1
        if earlier and outcome != MISSED:
            self.log.warning(
                "schedule",
                extra={**self._fields(entry), "outcome": MISSED, "count": earlier,
                       "since": iso(claim.previous)},
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.runs.labels(zone, script, MISSED).inc(earlier)
        if self.metrics is not None:
            self.metrics.runs.labels(zone, script, outcome).inc(count)
        fields["outcome"] = outcome
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
        return log_fields(entry.found.zone, entry.found.script, entry.cron, entry.tz)
