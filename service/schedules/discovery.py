"""Which scripts have schedules: the files that mention SCHEDULE, described by a runner.

A script is imported only by a runner (runners/script_import.py), and importing a
thousand scripts to find the ten with a schedule would cost a runner each. So a file is
read (once per change of its stat) for the word SCHEDULE, and only those that have it
are described, through the same ScriptCache as calls (describe.script_state: a changed
file is described again, a broken one reported, not retried on every scan). A script
that gets SCHEDULE only through `from helpers import *` is not found: say it in the
script itself.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.schedules.spec import MARKER, ScheduleSpec
from service.scripts.describe import DESCRIBE_AT_ONCE, script_state
from service.scripts.loader import Stamp, stamp
from service.scripts.resolve import ZONES, located_scripts, zone_dir
from service.scripts.revision import served_root

if TYPE_CHECKING:
    from service.runtime import Runtime

MAX_READ = 4 * 1024 * 1024  # a script bigger than this is looked for in its first 4 MiB


@dataclass(frozen=True)
class Scheduled:
    """A script with a schedule (`spec`), or one that mentions SCHEDULE and is broken
    (`error`: what routes and `check` also show)."""

    zone: str
    script: str  # zone-relative
    url: str
    spec: ScheduleSpec | None
    retries: int = 0
    error: str = ""


class Marked:
    """Per process: which files mention SCHEDULE, by stat (a file read once per change)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Stamp | None, bool]] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str) -> bool:
        current = stamp(path)
        with self._lock:
            known = self._seen.get(path)
        if known is not None and known[0] == current:
            return known[1]
        try:
            with open(path, "rb") as file:
                found = MARKER in file.read(MAX_READ)
        except OSError:
            found = False
        with self._lock:
            self._seen[path] = (current, found)
        return found

    def keep_only(self, paths: set[str]) -> None:
        """Forget deleted files, so the cache follows the folder."""
        with self._lock:
            for path in set(self._seen) - paths:
                del self._seen[path]


MARKED = Marked()


def discover(rt: Runtime, marked: Marked = MARKED) -> list[Scheduled]:
    """Every script with a schedule, and every broken one that mentions SCHEDULE; new
    and changed ones described by a few runners at once (describe.DESCRIBE_AT_ONCE)."""
    root = Path(served_root(rt.settings.scripts_dir))
    candidates: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for zone in ZONES:
        folder = str(zone_dir(root, zone))
        for path, real in located_scripts(root, zone):
            joined = os.path.join(folder, path)
            seen.add(joined)
            if marked(joined):
                candidates.append((zone, path, real))
    with ThreadPoolExecutor(DESCRIBE_AT_ONCE, thread_name_prefix="scriptgate-discover") as pool:
        states = list(pool.map(lambda c: script_state(rt, c[0], c[1], real=c[2]), candidates))
    found: list[Scheduled] = []
    for state in states:
        if state is None:  # deleted since it was listed
            continue
        if state.script is None:
            error = state.error or state.state
            found.append(Scheduled(state.zone, state.path, state.url, None, error=error))
        elif state.script.schedule is not None:
            script = state.script
            found.append(
                Scheduled(state.zone, state.path, state.url, script.schedule, script.retries)
            )
    marked.keep_only(seen)
    return found
