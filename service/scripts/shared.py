"""Script descriptions shared by a server's processes, in its private run folder.

Each process (web worker, platform plane, job worker, scheduler) keeps its own
ScriptCache, and a script it never described costs it a runner import before a listing
can show it: with 500 new scripts, minutes of imports per process. The first process
whose runner describes a script writes what the runner said here, with the stat stamps
of the files it imported; another process that has no description of that script takes
this one while every stamp still matches, and imports nothing.

Only successful descriptions are written; a failure is each process's own to find. The
folder is the server's run folder (private to the server's user, removed at exit), so
an entry is never older than the code reading it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

Stamp = tuple[str, int, int, int]  # path, mtime_ns, size, inode (loader.stamp)


class SharedDescriptions:
    """One JSON file per script (by real path), written whole and renamed into place."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _file(self, path: str) -> Path:
        return self.folder / (hashlib.sha256(path.encode()).hexdigest()[:32] + ".json")

    def write(self, path: str, stamps: tuple[Stamp, ...], info: dict[str, Any]) -> None:
        """What a runner said of the script at `path`, valid while `stamps` hold. A
        failure to write costs other processes an import, nothing else."""
        entry = json.dumps({"path": path, "stamps": stamps, "info": info})
        target = self._file(path)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            temporary.write_text(entry)
            os.replace(temporary, target)

    def read(self, path: str) -> tuple[tuple[Stamp, ...], dict[str, Any]] | None:
        """(stamps, info) as written for `path`; None when absent or unreadable. The
        caller checks the stamps against the files."""
        try:
            entry = json.loads(self._file(path).read_text())
            if entry["path"] != path or not isinstance(entry["info"], dict):
                return None
            stamps = tuple((str(p), int(m), int(s), int(i)) for p, m, s, i in entry["stamps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return stamps, entry["info"]
