"""Each schedule's state, who paused what, and the claims that make a scheduled time
run once per cluster.

They live beside the jobs, in the same SQLite file or Redis database (sqlite_state.py,
redis_state.py), so every scheduler sharing a job store shares them. `claim` is the
one atomic step: of every scheduler that finds the same time due, one gets it (an
INSERT on a unique key in SQLite, SET NX in Redis), and only if that time is later than
the last one handled, so a time is never handled twice, nor an older one after a newer.

A claim stays open until its outcome is recorded. One left open longer than
CLAIM_LEASE_SECONDS (its scheduler was killed, or is stuck) is taken over by any
scheduler (`take_over`, a compare-and-set on when it was claimed), so a crash between
the claim and the job loses no scheduled time; `record` succeeds only for the claim's
current holder, so the outcome is recorded, logged and counted once. The job itself is
created at most once because it carries the idempotency key of its scheduled time
(`run_key`): a holder that was slow, not dead, gets the recoverer's job back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

STARTED, SKIPPED, MISSED = "started", "skipped", "missed"
OUTCOMES = (STARTED, SKIPPED, MISSED)
CLAIM_DAYS = 7  # a claim outlives any catch-up window by far; then it is removed
# How long a claim may stay open before another scheduler takes it over. A claim is
# followed by its outcome within milliseconds (a read, the job's two writes, the outcome:
# docs/schedules.md measured 12 ms per time with 1,000 due at once), so 30 s means the
# holder is dead or stuck; 15 scan periods, and well inside the default catch-up hour, so
# a recovered time still runs. Taking over a slow holder's claim costs nothing but a log
# line: both create the same job (run_key).
CLAIM_LEASE_SECONDS = 30.0
RUN_KEY_PREFIX = "schedule:"  # never the SHA-256 hex digest a caller's Idempotency-Key is


def schedule_key(zone: str, script: str, cron: str) -> str:
    """One schedule: a script's cron expression (a script may have several)."""
    return json.dumps([zone, script, cron], separators=(",", ":"))


def script_key(zone: str, script: str) -> str:
    """What pause and resume act on: every schedule of a script."""
    return json.dumps([zone, script], separators=(",", ":"))


@dataclass(frozen=True)
class ScheduleState:
    zone: str
    script: str
    cron: str
    last_at: float  # the last scheduled time handled, or when the schedule was first seen
    last_outcome: str = ""  # started, skipped or missed; "" before the first
    last_job: str | None = None  # the job of the last run started
    last_run_at: float | None = None  # the scheduled time of the last outcome
    next_at: float | None = None  # as the scheduler last computed it
    last_success_at: float | None = None  # when the last started run succeeded
    failures: int = 0  # started runs in a row that did not succeed


def run_key(zone: str, script: str, cron: str, due: float) -> str:
    """The idempotency key of a scheduled time's job: whoever creates it, one job.

    Jobs scope keys by caller (`schedule` for every scheduled job; keys_file.py refuses a key
    of that name), and a caller's key is stored as a 64-digit hex digest, which this,
    with its prefix and colon, can never be."""
    text = json.dumps([zone, script, cron, repr(due)], separators=(",", ":"))
    return RUN_KEY_PREFIX + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A scheduled time taken by one scheduler, open until its outcome is recorded."""

    zone: str
    script: str
    cron: str
    due: float  # the scheduled time claimed
    previous: float  # the last scheduled time handled before the claimed one
    last_job: str | None  # the last job started (for the overlap check)
    claimed_at: float  # when its holder took it: take_over and record compare it
    recovered: bool = False  # taken over from a holder that let its lease pass

    @property
    def label(self) -> tuple[str, str, str]:
        return self.zone, self.script, self.cron


class ScheduleStore:
    """What the scheduler, the schedule views and the metrics ask of a store."""

    def register(self, zone: str, script: str, cron: str, now: float) -> ScheduleState:
        """The schedule's state; a schedule seen for the first time starts at `now`
        (earlier times were never its to run)."""
        raise NotImplementedError

    def claim(self, zone: str, script: str, cron: str, due: float, now: float) -> Claim | None:
        """Take scheduled time `due` for this caller alone. Returns the last time handled
        before it (the misses lie between) and the last job started, or None: another
        scheduler has it, or a later time was handled already."""
        raise NotImplementedError

    def open_claims(self, claimed_before: float) -> list[Claim]:
        """Claims without an outcome, taken at or before `claimed_before` (their
        `last_job` is not read: take_over reads it)."""
        raise NotImplementedError

    def take_over(self, claim: Claim, now: float) -> Claim | None:
        """Hold an open claim from now, if it is still as `open_claims` listed it (not
        recorded, not taken over by another meanwhile); None otherwise."""
        raise NotImplementedError

    def record(self, claim: Claim, outcome: str, job_id: str | None, next_at: float) -> bool:
        """What became of the claimed time, and when the next one is: closes the claim.
        False, recording nothing, when the caller no longer holds it (taken over). A
        later time's outcome already recorded stays the schedule's last run."""
        raise NotImplementedError

    def set_next(self, zone: str, script: str, cron: str, next_at: float) -> None:
        raise NotImplementedError

    def finished(self, zone: str, script: str, cron: str, job_id: str, at: float, ok: bool) -> None:
        """A started run ended (`ok`: succeeded). Counted once per job, whichever
        scheduler sees it first."""
        raise NotImplementedError

    def states(self) -> list[ScheduleState]:
        raise NotImplementedError

    def forget(self, zone: str, script: str, cron: str) -> None:
        """The script no longer has this schedule (edited or deleted)."""
        raise NotImplementedError

    def paused(self) -> set[tuple[str, str]]:
        """(zone, script) of every paused script."""
        raise NotImplementedError

    def set_paused(self, zone: str, script: str, paused: bool, now: float) -> None:
        raise NotImplementedError

    def sweep(self, now: float) -> int:
        """Remove claims older than CLAIM_DAYS; how many."""
        return 0
