"""The multiprocess metrics directory: prepare, lock, mark dead workers, compact.

prometheus_client keeps one file per worker per metric type and re-reads every file on
each scrape, dead workers' included (client_python issue 367), so scrape time grows with
every restart. When gunicorn reaps a worker, its counter, histogram and gauge files are
merged into one `*_archive.db` per type and removed. Scrapes hold a shared lock and the
merge an exclusive one, so no scrape ever sees a worker counted twice or not at all,
and counters never go down.

Recipe (what `scriptgate serve` does, in this order; see server.py):
1. `MetricsDir.prepare(configured)` before prometheus_client is imported anywhere:
   creates a private directory when none is configured, wipes it, takes a lock on it for
   the server's lifetime so a second server cannot share it, and exports
   PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it, once, at import in each worker).
2. `worker_exited(pid, directory)` from gunicorn's child_exit hook.
3. `MetricsDir.cleanup()` from gunicorn's on_exit hook removes a private directory.

Each process's exemplars (observability/exemplars.py) are one `exemplars_<pid>.bin` file
beside the values; a dead worker's is removed with its live gauges.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
READ_LOCK = ".scrape.lock"
SERVER_LOCK = ".server.lock"
ARCHIVE = "archive"
EXEMPLARS_PREFIX, EXEMPLARS_SUFFIX = (
    "exemplars_",
    ".bin",
)  # service/observability/exemplars.py's files


class DirectoryInUse(RuntimeError):
    """Another running server holds this metrics directory."""


class MetricsDir:
    """The server's metrics directory, prepared once in the master."""

    def __init__(self, path: Path, private: bool, lock_fd: int) -> None:
        self.path = path
        self.private = private
        self._lock_fd = lock_fd

    @classmethod
    def prepare(cls, configured: Path | None) -> MetricsDir:
        if configured is not None:
            directory = configured
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = Path(tempfile.mkdtemp(prefix="scriptgate-metrics-"))
        fd = os.open(directory / SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if configured is None:
                shutil.rmtree(directory, ignore_errors=True)
            raise DirectoryInUse(f"{ENV}: {directory} is used by another running server") from None
        # Left over from a previous run: counting it again would make counters jump.
        for stale in glob.glob(str(directory / "*.db")) + _exemplar_files(directory, "*"):
            os.remove(stale)
        # prometheus_client's only interface for this: read once, at import, per process.
        os.environ[ENV] = str(directory)
        return cls(directory, configured is None, fd)

    def cleanup(self) -> None:
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def _locked(directory: Path | None, mode: int) -> Iterator[None]:
    if directory is None:
        yield
        return
    fd = os.open(directory / READ_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


def reading(directory: Path | None) -> contextlib.AbstractContextManager[None]:
    """Hold while collecting, so a compaction never runs half-way through a scrape."""
    return _locked(directory, fcntl.LOCK_SH)


def _archive_name(path: str) -> tuple[str, str] | None:
    """(archive file name, how to merge) for a dead worker's file, None to just delete."""
    parts = os.path.basename(path)[:-3].split("_")
    kind = parts[0]
    if kind in ("counter", "histogram", "summary"):
        return f"{kind}_{ARCHIVE}.db", "sum"
    if kind == "gauge" and len(parts) >= 3:
        mode = parts[1]
        if mode in ("sum", "max", "min"):
            return f"gauge_{mode}_{ARCHIVE}.db", mode
    return None  # live gauges vanish with their worker; 'all'/'mostrecent' are per pid


def worker_exited(pid: int, directory: Path) -> None:
    """Fold a dead worker's values into the archive files and remove its files."""
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    with _locked(directory, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, str(directory))
        for path in glob.glob(str(directory / f"*_{pid}.db")):
            target = _archive_name(path)
            if target is not None:
                archive_name, how = target
                archive = MmapedDict(str(directory / archive_name))
                try:
                    current = {key: value for key, value, _ in archive.read_all_values()}
                    for key, value, timestamp, _ in read_values(path):
                        merged = _merge(how, current.get(key), value)
                        archive.write_value(key, merged, timestamp)
                finally:
                    archive.close()
            os.remove(path)
        # Its exemplars go with it, like its live gauges (service/observability/exemplars.py).
        for path in _exemplar_files(directory, str(pid)):
            os.remove(path)


def _exemplar_files(directory: Path, pid: str) -> list[str]:
    return glob.glob(str(directory / f"{EXEMPLARS_PREFIX}{pid}{EXEMPLARS_SUFFIX}"))


def read_values(path: str) -> list[tuple[str, float, float, int]]:
    """A metrics file's values; none for a file that is gone or not yet sized.

    A starting worker creates its file empty and sizes it a moment later; reading it in
    between must neither fail a scrape nor crash the master's merge
    (prometheus/client_python#1199).
    """
    from prometheus_client.mmap_dict import MmapedDict

    try:
        return list(MmapedDict.read_all_values_from_file(path))
    except (FileNotFoundError, struct.error):
        return []


def _merge(how: str, old: float | None, new: float) -> float:
    if old is None:
        return new
    if how == "sum":
        return old + new
    return max(old, new) if how == "max" else min(old, new)
