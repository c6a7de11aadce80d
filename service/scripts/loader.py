"""What a worker knows of each script, and when it must ask a runner again.

The worker never imports a script: a runner does (runners/script_import.py) and sends
its description, kept here by real path with the stat stamps of the script and the
helpers it imported. Each request costs one `os.stat` per file the script depends on;
any change makes the next call start a fresh runner, which imports the new code.

A script whose import timed out is backed off (backoff.py): calls get 503 at once, for
a time that doubles with each timeout until the file changes, so a hanging import cannot
wedge a runner per call or per probe. A description one process's runner made is shared
with the server's other processes (shared.py): each need not import every script.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.runners.failures import ImportFailed, ScriptTimeout
from service.runners.pool import Hooks, Runner, RunnerPool
from service.runners.script_import import DEFAULT_METHODS as _DEFAULT_METHODS
from service.runners.script_import import MISSING, ScriptLoadError
from service.schedules.spec import ScheduleSpec
from service.scripts.backoff import FAILURE_RECHECK_SECONDS, BackedOff, Failure
from service.scripts.params import Params
from service.scripts.problems import NoScript
from service.scripts.resolve import Target, zone_dir
from service.scripts.shared import SharedDescriptions
from service.small import file_stamp

DEFAULT_METHODS = frozenset(_DEFAULT_METHODS)

Stamp = tuple[str, int, int, int]  # path, mtime_ns, size, inode

__all__ = ["DEFAULT_METHODS", "BackedOff", "LoadedScript", "ScriptCache", "ScriptLoadError"]


DEFAULT_RETRY_DELAY = 1.0  # seconds before a job's first retry, without RETRY_DELAY


@dataclass(frozen=True)
class LoadedScript:
    path: str
    methods: frozenset[str]
    timeout: float  # effective: the script's TIMEOUT, capped at MAX_SCRIPT_TIMEOUT
    requested_timeout: float | None  # the script's own TIMEOUT, when it set one
    concurrency: int  # 0: no limit
    summary: str
    description: str  # the module docstring after its first line
    params: Params | None  # what the handler declares after `request` (params.py)
    stamps: tuple[Stamp, ...]
    run_async: bool = False  # ASYNC = True: every call runs as a job (service/jobs)
    job_timeout: float | None = None  # the script's JOB_TIMEOUT; None: $JOB_TIMEOUT
    memory_limit: int | None = None  # the script's MEMORY_LIMIT; None: $SCRIPT_MEMORY_LIMIT
    retries: int = 0  # RETRIES: a job's runs after the first, when one fails
    retry_delay: float = 1.0  # RETRY_DELAY: seconds before the first retry, then doubled
    schedule: ScheduleSpec | None = None  # SCHEDULE_*: runs itself as a job (schedules/)

    @property
    def timeout_capped(self) -> bool:
        return self.requested_timeout is not None and self.requested_timeout > self.timeout

    @property
    def key(self) -> tuple[Stamp, ...]:
        """Which runners may serve it: those that imported exactly these files."""
        return self.stamps


def stamp(path: str) -> Stamp | None:
    found = file_stamp(path)
    return None if found is None else (path, *found)


def unchanged(stamps: Iterable[Stamp]) -> bool:
    return all(stamp(s[0]) == s for s in stamps)


class ScriptCache:
    """Per-worker descriptions of scripts, keyed by real path and checked by stat."""

    def __init__(
        self,
        scripts_dir: Path,
        default_timeout: float,
        max_timeout: float,
        default_concurrency: int = 0,
        log: logging.Logger | None = None,
        on_backoff: Callable[[str], None] | None = None,
        shared: SharedDescriptions | None = None,
    ) -> None:
        self.root = str(scripts_dir)  # may lead through git-sync's link: see revision.py
        self.shared = shared  # what the server's other processes' runners described
        self.on_backoff = on_backoff  # told the real path of each script it backs off
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.default_concurrency = default_concurrency
        self.log = log or logging.getLogger("scriptgate")
        self._scripts: dict[str, LoadedScript] = {}
        self._targets: dict[Target, tuple[str, LoadedScript]] = {}
        self._failures: dict[str, Failure] = {}
        self._lock = threading.Lock()

    def cached_target(self, target: Target) -> LoadedScript | None:
        """The hot path: one stat of the URL's file, compared with what was imported.

        The target was resolved (symlinks, zone, private names) when it was remembered.
        Any change of the file it leads to (edit, delete, a symlink swapped to another
        file) changes the stat, and the caller resolves the path afresh.
        """
        entry = self._targets.get(target)
        if entry is None:
            return None
        joined, script = entry
        # The URL's path may differ from the real path (symlinks): compare all but the path.
        current = stamp(joined)
        if (
            current is None
            or current[1:] != script.stamps[0][1:]
            or not unchanged(script.stamps[1:])
        ):
            self._targets.pop(target, None)
            if current is None or os.path.realpath(joined) != script.path:
                # The URL leads elsewhere now (a git-sync swap): drop the old file's entry,
                # or a worker would keep one per revision it ever served.
                self._scripts.pop(script.path, None)
            return None
        return script

    def remember(self, target: Target, script: LoadedScript) -> None:
        self._targets[target] = (
            os.path.join(zone_dir(Path(self.root), target.zone), target.rel_path),
            script,
        )

    def cached(self, path: str) -> LoadedScript | None:
        """The description if nothing the script depends on changed since its import:
        this process's, or, for a script it never described, another process's."""
        script = self._scripts.get(path)
        if script is None:
            return self._shared(path)
        return script if unchanged(script.stamps) else None

    def _shared(self, path: str) -> LoadedScript | None:
        """Another process's description, while every file it imported is unchanged (a
        changed one is left to `load`, which also retires the old runners)."""
        found = self.shared.read(path) if self.shared is not None else None
        if found is None or not unchanged(found[0]):
            return None
        try:
            script = self._describe(path, found[0][0], found[1])
        except (KeyError, TypeError, ValueError):  # not a description: import instead
            return None
        with self._lock:
            return self._scripts.setdefault(path, script)

    def load(
        self, path: str, runners: RunnerPool, hooks: Hooks | None = None
    ) -> tuple[LoadedScript, Runner]:
        """Have a new runner import the script: its description, and the runner (warm,
        for the call that asked). Raises ScriptLoadError, ScriptTimeout, BackedOff."""
        own = stamp(path)
        if own is None:  # deleted since it was found: as if it never existed
            raise NoScript(path)
        failure = self._failures.get(path)
        if failure is not None and failure.stamp == own:
            wait = failure.at + failure.backoff() - time.monotonic()
            if wait > 0:
                raise BackedOff(wait)
        old = self._scripts.get(path)
        try:
            info, runner = runners.start(
                own, path, old.memory_limit if old else None, self.default_timeout, hooks
            )
        except ImportFailed as exc:
            if exc.state == MISSING:
                raise NoScript(path) from None
            error = ScriptLoadError(str(exc), exc.state)
            error.remote_traceback = exc.remote_traceback  # type: ignore[attr-defined]
            self._fail(path, own, error, timeout=False)
            raise error from None
        except ScriptTimeout as exc:
            self._fail(path, own, exc, timeout=True)
            raise
        script = self._describe(path, own, info)
        if script.memory_limit and script.memory_limit != runner.memory:
            runners.kill(runner)  # started under the default limit: again, under its own
            info, runner = runners.start(
                script.key, path, script.memory_limit, self.default_timeout
            )
        runner.key = script.key
        with self._lock:
            if old is not None and old.key != script.key:
                runners.discard(lambda key: key == old.key)
            self._scripts[path] = script
            self._failures.pop(path, None)
        if self.shared is not None:
            self.shared.write(path, script.stamps, info)
        return script, runner

    def start_runner(
        self, script: LoadedScript, runners: RunnerPool, hooks: Hooks | None = None
    ) -> Runner:
        """Another runner for a described script (every warm one is busy): a cold start."""
        try:
            _, runner = runners.start(
                script.key, script.path, script.memory_limit, script.timeout, hooks
            )
        except ImportFailed as exc:
            if exc.state == MISSING:
                raise NoScript(script.path) from None
            raise
        return runner

    def _describe(self, path: str, own: Stamp | None, info: dict[str, Any]) -> LoadedScript:
        helpers = [s for s in (stamp(f) for f in info.get("helpers", [])) if s is not None]
        requested = info.get("timeout")
        concurrency = info.get("concurrency")
        params = info.get("params")
        script = LoadedScript(
            path=path,
            methods=frozenset(info["methods"]),
            timeout=min(requested or self.default_timeout, self.max_timeout),
            requested_timeout=requested,
            concurrency=self.default_concurrency if concurrency is None else concurrency,
            summary=info.get("summary", ""),
            description=info.get("description", ""),
            params=Params.from_json(params) if params else None,
            stamps=(own or (path, 0, 0, 0), *sorted(helpers)),
            run_async=bool(info.get("async")),
            job_timeout=info.get("job_timeout"),
            memory_limit=info.get("memory_limit"),
            retries=info.get("retries") or 0,
            retry_delay=info.get("retry_delay") or DEFAULT_RETRY_DELAY,
            schedule=ScheduleSpec.from_json(info["schedule"]) if info.get("schedule") else None,
        )
        if script.timeout_capped:
            self.log.warning(
                "%s asks for TIMEOUT = %g s; it gets MAX_SCRIPT_TIMEOUT, %g s",
                os.path.relpath(path, self.root),
                requested,
                script.timeout,
            )
        return script

    def _fail(self, path: str, own: Stamp | None, exc: BaseException, timeout: bool) -> None:
        with self._lock:
            last = self._failures.get(path)
            timeouts = last.timeouts + 1 if timeout and last and last.stamp == own else 0
            failure = Failure(own, time.monotonic(), exc, timeouts or int(timeout))
            self._failures[path] = failure
        if failure.timeouts:
            self.log.warning(
                "%s: import timed out %d time(s) in a row; backed off for %.0f s",
                os.path.relpath(path, self.root),
                failure.timeouts,
                failure.backoff(),
            )
            if self.on_backoff is not None:
                self.on_backoff(path)

    def recent_failure(self, path: str) -> BaseException | None:
        """How the last import of this unchanged file failed, for listings that must not
        start a broken script's runner on every call; None when it is worth another try."""
        failure = self._failures.get(path)
        if failure is None or failure.stamp != stamp(path):
            return None
        window = max(FAILURE_RECHECK_SECONDS, failure.backoff())
        return failure.error if time.monotonic() - failure.at < window else None

    def backed_off(self) -> list[str]:
        """Real paths of the unchanged scripts whose import timed out and is backed off."""
        return sorted(path for path in list(self._failures) if self.is_backed_off(path))

    def is_backed_off(self, path: str) -> bool:
        """Whether this script's import timed out and it is backed off, unchanged since."""
        failure = self._failures.get(path)
        if failure is None or not failure.timeouts:
            return False
        return time.monotonic() < failure.at + failure.backoff() and failure.stamp == stamp(path)
