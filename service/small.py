"""Small rules several layers share, each written once: a file's change stamp, the
ISO 8601 UTC form of a time (`...Z`), and a value made once per process (the fork guard).
Imports nothing of Scriptgate's."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

FileStamp = tuple[int, int, int]  # mtime_ns, size, inode


def file_stamp(path: str | os.PathLike[str]) -> FileStamp | None:
    """What changes when a file is written or replaced (a new inode: git-sync's swap, an
    editor's rename); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def iso_z(moment: float | dt.datetime | None, timespec: str = "milliseconds") -> str | None:
    """`2026-12-06T05:00:00.000Z`: a Unix time or an aware datetime, in UTC."""
    if moment is None:
        return None
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.fromtimestamp(moment, tz=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    """An ISO 8601 time or date, `Z` allowed; naive stays naive. ValueError if not one."""
    return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))


class PerProcess(Generic[T]):
    """A value this process made: made again in a forked child, where the parent's
    descriptors and connections are not the child's to use (two writers on one file, a
    socket shared across a fork)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid = 0
        self._value: T | None = None

    def get(self) -> T:
        if self._pid == os.getpid():
            return self._value  # type: ignore[return-value]
        with self._lock:
            if self._pid != os.getpid():
                self._value = self._make()
                self._pid = os.getpid()
            return self._value  # type: ignore[return-value]

    def peek(self) -> T | None:
        """The value if this process made it, without making one."""
        return self._value if self._pid == os.getpid() else None

    def forget(self) -> None:
        """Make it again on the next `get` (after closing it)."""
        with self._lock:
            self._value, self._pid = None, 0


def method_names(raw: Iterable[str]) -> frozenset[str]:
    """Method names as a script's METHODS or a key's `methods` give them: upper case, and
    HEAD wherever GET is (HEAD is GET without the body, as Flask does)."""
    methods = {name.strip().upper() for name in raw}
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)
