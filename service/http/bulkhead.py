"""Per-script concurrency limits (`CONCURRENCY = n`), exact across a server's workers.

A script with a limit of n has n slot files in the server's run directory; a call takes
a slot with a non-blocking `flock`, or is refused at once. The kernel holds the locks,
so the count is exact across worker processes without a shared server, and a worker
that dies (killed, segfault) releases its slots with its file descriptors: a slot can
never leak. Threads of one worker share their descriptors, so a per-process set tells
which slots this process already holds (two threads' flock on one descriptor would not
exclude each other). No library was used: `limits` and Flask-Limiter count requests in a
window, they do not hold a slot for a request's duration.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from service.small import PerProcess

_Slots = tuple[dict[tuple[str, int], int], set[tuple[str, int]]]  # descriptors, held


class Bulkhead:
    """Slots under `directory`, shared by every process that uses the same directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Per process: a forked child's descriptors and slots are not its parent's.
        self._slots: PerProcess[_Slots] = PerProcess(lambda: ({}, set()))
        self._lock = threading.Lock()

    def take(self, name: str, limit: int) -> Callable[[], None] | None:
        """Hold one of `limit` slots of `name`; the function that frees it, or None when
        all are taken. Any thread may free it (a script's runner, when it really ends)."""
        taken = self._take(name, limit)
        if taken is None:
            return None
        return functools.partial(self._release, taken)

    def _take(self, name: str, limit: int) -> tuple[str, int] | None:
        key = hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:20]
        fds, held = self._slots.get()
        with self._lock:
            for index in range(limit):
                slot = (key, index)
                if slot in held:
                    continue
                fd = fds.get(slot)
                if fd is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    path = self.directory / f"{key}.{index}"
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    fds[slot] = fd
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                held.add(slot)
                return slot
        return None

    def _release(self, slot: tuple[str, int]) -> None:
        fds, held = self._slots.get()
        with self._lock:
            held.discard(slot)
            fd = fds.get(slot)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
