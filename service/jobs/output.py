"""A running job's own log lines and progress, on their way to the job store.

The runner sends them to the job worker as it sends a call's log lines (scriptlog.py
writes those to the app log); here they also become the run's `log` and `progress`
events, read by GET /_platform/jobs/<id>/logs and /events. A thread writes them in
batches (at most one write per FLUSH_SECONDS), so a script printing fast costs the store
a write per batch, not one per line, and a line still reaches a follower in well under
a second. A run keeps at most JOB_LOG_LIMIT bytes of lines; past it one line says so.

A store that fails for a moment loses nothing: the batch is kept (up to MAX_PENDING
events) and written with the next. The same lines are in the app log whatever happens.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from service.jobs.store import LOG, PROGRESS, JobStore, event_text
from service.small import iso_z

FLUSH_SECONDS = 0.02
RETRY_SECONDS = 0.5  # after the store failed
MAX_PENDING = 10_000  # events held while the store does not answer
CLOSE_SECONDS = 5.0  # the last batch's time to reach the store when the run ends
MAX_PROGRESS_MESSAGE = 200
_LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def progress_value(fraction: Any, message: Any) -> dict[str, Any] | None:
    """A runner's progress as the record keeps it, or None when it is not one (the
    runner is untrusted: the script's helper checked it, a hostile script may not)."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        return None
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        return None
    text = message if isinstance(message, str) else ""
    return {"fraction": float(fraction), "message": text[:MAX_PROGRESS_MESSAGE]}


class JobOutput:
    """One run's events, written by a thread of their own until `close()`."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        limit: int,
        scrub: Callable[[str], str],
        log: Any,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.left = limit
        self.scrub = scrub
        self.log = log
        self.cut = 0  # bytes of lines over the limit
        self._pending: list[str] = []
        self._progress: str | None = None
        self._last_is_progress = False
        self._cond = threading.Condition()
        self._closed = False
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="scriptgate-job-output")
        self._thread.daemon = True
        self._thread.start()

    # -- from the runner's messages (the call's thread) -------------------------------
    def line(self, message: dict[str, Any]) -> None:
        """A runner's `log` or `output` message (a `dropped` one is the runner's count of
        what it kept back: the run's lines were cut there)."""
        kind = message.get("t")
        if kind == "dropped":
            bytes_ = message.get("bytes")
            self._over(bytes_ if isinstance(bytes_, int) and bytes_ > 0 else 0)
            return
        text = str(message.get("message", ""))
        if len(text) > self.left:
            self._over(len(text))
            return
        self.left -= len(text)
        data: dict[str, Any] = {"time": iso_z(time.time())}
        if kind == "output":
            stream = "stderr" if message.get("stream") == "stderr" else "stdout"
            data.update(level="WARNING" if stream == "stderr" else "INFO", stream=stream)
        else:
            data["level"] = _LEVEL_NAMES.get(message.get("level"), "WARNING")  # type: ignore[arg-type]
            data["logger"] = str(message.get("logger") or "root")[:200]
        data["message"] = self.scrub(text)
        self._add(event_text(LOG, data), progress=False)

    def _over(self, size: int) -> None:
        if not self.cut:  # said once, where the cut is
            note = {
                "time": iso_z(time.time()),
                "level": "WARNING",
                "stream": "scriptgate",
                "message": "log cut: over JOB_LOG_LIMIT; the app log has every line",
            }
            self._add(event_text(LOG, note), progress=False)
        self.cut += max(size, 1)
        self.left = 0

    def progress(self, fraction: Any, message: Any) -> None:
        value = progress_value(fraction, message)
        if value is None:
            return
        value["message"] = self.scrub(value["message"])
        with self._cond:
            self._progress = json.dumps(value)
        self._add(event_text(PROGRESS, value), progress=True)

    def _add(self, text: str, *, progress: bool) -> None:
        with self._cond:
            if progress and self._last_is_progress and self._pending:
                self._pending[-1] = text  # a newer progress replaces one not yet written
            elif len(self._pending) < MAX_PENDING:
                self._pending.append(text)
            self._last_is_progress = progress
            self._cond.notify()

    # -- the writer thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed, timeout=1.0)
                if not self._pending and self._progress is None and self._closed:
                    return
                batch, progress = self._pending, self._progress
                self._pending, self._progress = [], None
                self._last_is_progress = False
            if batch or progress is not None:
                written = self._write(batch, progress)
                if not written:
                    with self._cond:  # kept, ahead of what came meanwhile
                        self._pending = (batch + self._pending)[:MAX_PENDING]
                        if self._progress is None:
                            self._progress = progress
                        if self._closed:
                            return
                        self._cond.wait(RETRY_SECONDS)
                    continue
            with self._cond:
                if self._closed and not self._pending:
                    return
                self._cond.wait(FLUSH_SECONDS)  # a batch at most this often

    def _write(self, batch: list[str], progress: str | None) -> bool:
        try:
            self.store.append(self.job_id, batch, progress)
        except Exception as exc:
            if not self._failing:
                self.log.warning("job store did not take the job's output: %s", exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        """Write what is left (before the job's final state: nothing follows it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(CLOSE_SECONDS)
