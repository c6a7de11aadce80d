"""Each schedule's state, who paused what, and the claims that make a scheduled time
run once per cluster.

They live beside the jobs, in the same SQLite file or Redis database (sqlite_state.py,
redis_state.py), so every scheduler sharing a job store shares them. `claim` is the
one atomic step: of every scheduler that finds the same time due, one gets it (an
INSERT on a unique key in SQLite, SET NX in Redis), and only if that time is later than
the last one handled, so a time is never handled twice, nor an older one after a newer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

STARTED, SKIPPED, MISSED = "started", "skipped", "missed"
OUTCOMES = (STARTED, SKIPPED, MISSED)
CLAIM_DAYS = 7  # a claim outlives any catch-up window by far; then it is removed


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


@dataclass(frozen=True)
class Claim:
    previous: float  # the last scheduled time handled before the claimed one
    last_job: str | None  # the last job started (for the overlap check)


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

    def record(
        self,
        zone: str,
        script: str,
        cron: str,
        due: float,
        outcome: str,
        job_id: str | None,
        next_at: float,
    ) -> None:
        """What became of the claimed time `due`, and when the next one is."""
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
