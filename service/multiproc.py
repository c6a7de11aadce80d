"""The multiprocess metrics directory: prepare, lock, mark dead workers, compact.

prometheus_client keeps one file per worker per metric type and re-reads every file on
each scrape, dead workers' included (client_python issue 367), so scrape time grows with
every restart. When gunicorn reaps a worker, its counter, histogram and gauge files are
merged into one `*_archive.db` per type and removed. Scrapes hold a shared lock and the
merge an exclusive one, so no scrape ever sees a worker counted twice or not at all,
and counters never go down.

Recipe (what `scriptgate serve` and gunicorn_conf do, in this order):
1. `prepare_dir()` before prometheus_client is imported anywhere: creates a private
   directory when PROMETHEUS_MULTIPROC_DIR is unset, wipes it, and takes a lock on it
   for the server's lifetime so a second server cannot share it.
2. `worker_exited(pid)` from gunicorn's child_exit hook.
3. `cleanup()` from gunicorn's on_exit hook removes a private directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_ENV = "SCRIPTGATE_PRIVATE_METRICS_DIR"
READ_LOCK = ".scrape.lock"
SERVER_LOCK = ".server.lock"
ARCHIVE = "archive"
_LIVE_GAUGE_MODES = ("liveall", "livesum", "livemax", "livemin", "livemostrecent")


class DirectoryInUse(RuntimeError):
    """Another running server holds this metrics directory."""


_server_lock_fd: int | None = None


def prepare_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Make PROMETHEUS_MULTIPROC_DIR ready for a new server and export it to workers."""
    global _server_lock_fd
    configured = environ.get(ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="scriptgate-metrics-"))
        environ[PRIVATE_ENV] = str(directory)
    fd = os.open(directory / SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryInUse(f"{ENV}: {directory} is used by another running server") from None
    # Left over from a previous run: counting it again would make counters jump.
    for stale in glob.glob(str(directory / "*.db")):
        os.remove(stale)
    _server_lock_fd = fd
    environ[ENV] = str(directory)
    return directory


def cleanup(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    private = environ.get(PRIVATE_ENV)
    if private:
        shutil.rmtree(private, ignore_errors=True)


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


def worker_exited(pid: int, directory: Path | None = None) -> None:
    """Fold a dead worker's values into the archive files and remove its files."""
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    directory = directory or Path(os.environ[ENV])
    with _locked(directory, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, str(directory))
        for path in glob.glob(str(directory / f"*_{pid}.db")):
            target = _archive_name(path)
            if target is not None:
                archive_name, how = target
                archive = MmapedDict(str(directory / archive_name))
                try:
                    current = {key: value for key, value, _ in archive.read_all_values()}
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                        merged = _merge(how, current.get(key), value)
                        archive.write_value(key, merged, timestamp)
                finally:
                    archive.close()
            os.remove(path)


def _merge(how: str, old: float | None, new: float) -> float:
    if old is None:
        return new
    if how == "sum":
        return old + new
    return max(old, new) if how == "max" else min(old, new)
