"""What watches a running job: the question the runner pool asks while the script runs
(cancelled? the worker stopping?), the heartbeat on the way, and the job's log adapter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import MutableMapping
from typing import Any

from service.jobs.store import JobStore

HEARTBEAT_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0  # a running job's time to finish when its worker is stopped


class Shutdown:
    """Set on SIGTERM: take no new job; a running one has STOP_GRACE_SECONDS left."""

    def __init__(self) -> None:
        self.event = threading.Event()  # huey's worker loop waits on it
        self.deadline = math.inf

    def request(self) -> None:
        if not self.event.is_set():
            self.deadline = time.monotonic() + STOP_GRACE_SECONDS
            self.event.set()

    def overdue(self) -> bool:
        return self.event.is_set() and time.monotonic() >= self.deadline


class JobLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The app's logger with the job id on every record (the adapter's own `extra`
    would replace the record's, not add to it)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs

    def handle(self, record: logging.LogRecord) -> None:
        """A script's own record (scriptlog.py), with the job's fields where it has none
        (its import's output is written without them). Without this method, a job whose
        script logged anything failed outside its script."""
        for name, value in (self.extra or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        self.logger.handle(record)


class Watch:
    """The `stop()` the runner pool asks while the script runs; also the heartbeat.

    It never raises: a store that does not answer for a moment must not abandon the
    script (the next ask, 0.2 s later, tries again).
    """

    def __init__(self, store: JobStore, job_id: str, shutdown: Shutdown, log: Any) -> None:
        self.store = store
        self.job_id = job_id
        self.shutdown = shutdown
        self.log = log
        self.cancelled = False
        self._next_beat = time.monotonic() + HEARTBEAT_SECONDS
        self._failing = False  # log a store outage once, not five times a second

    def __call__(self) -> bool:
        try:
            if time.monotonic() >= self._next_beat:
                self._next_beat = time.monotonic() + HEARTBEAT_SECONDS
                self.cancelled = self.store.beat(self.job_id, time.time())
            else:
                self.cancelled = self.store.asked_to_stop(self.job_id)
            self._failing = False
        except Exception as exc:
            if not self._failing:
                self.log.warning("job store did not answer: %s", exc)
            self._failing = True
        return self.cancelled or self.shutdown.overdue()
