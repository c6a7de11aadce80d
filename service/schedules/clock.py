"""The time the scheduler goes by: the system's, or one a test sets.

The scheduler asks `now()` and waits with `wait()`; nothing else in it reads the time,
so a test drives it by handing the Scheduler a clock (ManualClock), and a test of real
servers by the hidden SCHEDULE_TEST_CLOCK setting (a file holding the time, FileClock):
waiting a real minute for `* * * * *` would make every test slow.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Protocol

FILE_POLL_SECONDS = 0.05  # how often a FileClock's time is read again


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds` of this clock's time, or until `stop`; True if stopped."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(0.0, seconds))


class ManualClock:
    """A clock a test moves (`set`, `advance`); waiting returns as soon as it moves."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._moved = threading.Condition()

    def now(self) -> float:
        with self._moved:
            return self._now

    def set(self, moment: float) -> None:
        with self._moved:
            self._now = moment
            self._moved.notify_all()

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        with self._moved:
            self._moved.wait(min(max(seconds, 0.0), FILE_POLL_SECONDS))
        return stop.is_set()


class FileClock:
    """SCHEDULE_TEST_CLOCK: the time is the number in a file (seconds since the epoch),
    which the test rewrites. Never for production: config.py documents it as a test
    setting, and a missing or unreadable file stops time (no run is started)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = 0.0

    def now(self) -> float:
        with contextlib.suppress(OSError, ValueError):  # mid-write or gone: the last read
            self._last = float(self.path.read_text().strip())
        return self._last

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(min(max(seconds, 0.0), FILE_POLL_SECONDS))


def clock_for(test_clock: Path | None) -> Clock:
    return SystemClock() if test_clock is None else FileClock(test_clock)
