"""A doorbell for job workers on the SQLite queue: a FIFO beside jobs.db.

What huey lacks: its SqliteStorage has no blocking dequeue, so an idle worker polls
(POLL_MIN after a job, backing off to POLL_MAX), and a job queued on an idle queue
waited for the next poll: most of a no-op job's 22 ms median from 202 to `succeeded`
(docs/jobs.md). Redis needs no bell: huey's RedisStorage pops with a blocking wait.

Whoever queues a job writes a byte to the FIFO; an idle job worker waits on it (instead
of huey's stop flag alone) and wakes at once. The bell only wakes: a byte lost (nobody
listening, a full pipe) costs the poll the worker would have made anyway, and a stray
byte costs one empty dequeue. Everything sharing jobs.db shares its folder, so it shares
the bell too.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings

BELL = "jobs.bell"


def queue_bell(settings: Settings) -> Path | None:
    """The bell of the job queue these settings open; None for Redis (no polling)."""
    return settings.job_data_dir / BELL if settings.job_broker_url is None else None


def ring(path: Path) -> None:
    """Wake one idle job worker, if any listens; never blocks, never fails the caller."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no bell yet, or nobody listening (ENXIO)
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never a byte into a file in its place
            os.write(fd, b"\0")
    except OSError:  # the pipe is full: workers are awake already
        pass
    finally:
        os.close(fd)


class WakeOnBell:
    """huey's Worker `stop_flag`: its `wait(timeout)` (the idle poll's sleep) returns early
    when the bell rings or `wake()` is called (a stop). Without a usable bell it waits on
    `stop` alone, as before."""

    def __init__(self, stop: threading.Event, path: Path | None) -> None:
        self.stop = stop
        self.fd: int | None = None
        if path is not None:
            self.fd = _listen(path)
        # This worker's own wake-up (a stop): a byte on the shared bell could be read by
        # another worker.
        self._own_r, self._own_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def is_set(self) -> bool:
        return self.stop.is_set()

    def wake(self) -> None:
        """End this worker's wait now (from its signal handler, once `stop` is set)."""
        with contextlib.suppress(OSError):
            os.write(self._own_w, b"\0")

    def wait(self, timeout: float | None = None) -> bool:
        if self.fd is None or self.stop.is_set():
            return self.stop.wait(timeout)
        ready, _, _ = select.select([self.fd, self._own_r], [], [], timeout)
        if self.fd in ready:
            # One byte: another idle worker may take the next job's byte.
            with contextlib.suppress(BlockingIOError):
                os.read(self.fd, 1)
        return self.stop.is_set()


def _listen(path: Path) -> int | None:
    """The bell's read end (made if missing); None where no FIFO can be (then: poll)."""
    with contextlib.suppress(OSError):  # there already, or a folder without FIFOs
        os.mkfifo(path, 0o600)
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        # Read and write: a FIFO whose writers all closed reads as "ready" (EOF) for
        # ever; holding a write end ourselves keeps select() quiet.
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
