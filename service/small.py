"""Small rules several layers share, each written once: a file's change stamp and the
ISO 8601 UTC form of a time (`...Z`). Imports nothing of Scriptgate's."""

from __future__ import annotations

import datetime as dt
import os

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
