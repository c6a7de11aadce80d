"""A cron expression's times, in a time zone: croniter's, wrapped once.

DST follows croniter's behaviour (7.0, pinned by tests/unit/test_schedules.py): a time in
the spring-forward gap runs at the first valid time after it; a time in the repeated
autumn hour runs in both (two instants, each claimed once).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

MAX_COUNTED_MISSES = 100_000  # misses counted one by one after downtime, at most


def cron_times(cron: str, tz: str, after: float) -> croniter:
    """The schedule's times after `after`, in its time zone: croniter's DST rule (a time
    in the spring-forward gap runs at the first time after it; one in the repeated
    autumn hour runs in both)."""
    return croniter(cron, datetime.fromtimestamp(after, ZoneInfo(tz)))


def next_time(cron: str, tz: str, after: float) -> float:
    return float(cron_times(cron, tz, after).get_next(float))


def latest_time(cron: str, tz: str, now: float) -> float:
    """The latest scheduled time at or before `now`."""
    return float(cron_times(cron, tz, int(now) + 1).get_prev(float))


def count_between(cron: str, tz: str, after: float, before: float) -> int:
    """Scheduled times strictly between `after` and `before` (at most MAX_COUNTED_MISSES)."""
    times = cron_times(cron, tz, after)
    count = 0
    while count < MAX_COUNTED_MISSES and times.get_next(float) < before:
        count += 1
    return count
