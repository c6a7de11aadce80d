"""Import scripts once per worker and re-import them when they, or a helper, change.

Each request costs one `os.stat` per file the script depends on (itself plus the
helper modules it imported from the scripts folder). Scripts and their helpers are
compiled straight from source, never from a `.pyc`: bytecode caches are keyed on a
one-second mtime, so a quick edit could otherwise keep serving the old code.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from service.deadline import ScriptTimeout
from service.errors import NotFound
from service.importer import HelperFinder, SourceLoader
from service.params import DeclarationError, Params, read_params
from service.resolve import Target, zone_dir
from service.revision import root_of

DEFAULT_METHODS = frozenset({"GET", "HEAD", "POST"})
LIB_DIR = "_lib"
HANDLER_NAMES = ("handle", "main")  # handle wins if both exist
# Listings (health, routes, the API document) retry a failed import of an unchanged file
# after this long: a package installed since then is found without touching the script.
FAILURE_RECHECK_SECONDS = 30.0

Stamp = tuple[str, int, int, int]  # path, mtime_ns, size, inode


class ScriptLoadError(Exception):
    """A script that cannot be imported or has no usable handler; the cause is chained.

    `state` is what routes and `scriptgate check` show: import_error or no_handler.
    """

    def __init__(self, message: str, state: str = "import_error") -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class LoadedScript:
    path: str
    module: ModuleType
    handler: Callable[[Any], Any]
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

    @property
    def timeout_capped(self) -> bool:
        return self.requested_timeout is not None and self.requested_timeout > self.timeout


def stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def unchanged(stamps: Iterable[Stamp]) -> bool:
    return all(stamp(s[0]) == s for s in stamps)


def _docstring(module: ModuleType) -> tuple[str, str]:
    """(summary, description): the module docstring's first line, and the rest."""
    summary, _, rest = inspect.cleandoc(module.__doc__ or "").partition("\n")
    return summary.strip(), rest.strip()


def _methods(module: ModuleType) -> frozenset[str]:
    raw = getattr(module, "METHODS", None)
    if raw is None:
        return DEFAULT_METHODS
    if isinstance(raw, str) or not all(isinstance(m, str) for m in raw):
        raise ScriptLoadError("METHODS must be a list of method names")
    methods = {m.strip().upper() for m in raw}
    if "GET" in methods:
        methods.add("HEAD")  # as Flask does: HEAD is GET without the body
    return frozenset(methods)


def _seconds(module: ModuleType, name: str) -> float | None:
    raw = getattr(module, name, None)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ScriptLoadError(f"{name} must be a number of seconds")
    if raw <= 0:
        raise ScriptLoadError(f"{name} must be greater than 0")
    return float(raw)


def _run_async(module: ModuleType) -> bool:
    raw = getattr(module, "ASYNC", False)
    if not isinstance(raw, bool):
        raise ScriptLoadError("ASYNC must be True or False")
    return raw


def _concurrency(module: ModuleType, default: int) -> int:
    raw = getattr(module, "CONCURRENCY", None)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ScriptLoadError("CONCURRENCY must be a whole number of at least 1")
    return raw


class ScriptCache:
    """Per-worker cache of loaded scripts, keyed by real path and checked by stat."""

    def __init__(
        self,
        scripts_dir: Path,
        default_timeout: float,
        max_timeout: float,
        default_concurrency: int = 0,
        log: logging.Logger | None = None,
    ) -> None:
        self.root = str(scripts_dir)  # may lead through git-sync's link: see revision.py
        self.default_timeout = default_timeout
        self.max_timeout = max_timeout
        self.default_concurrency = default_concurrency
        self.log = log or logging.getLogger("scriptgate")
        self._scripts: dict[str, LoadedScript] = {}
        self._targets: dict[Target, tuple[str, LoadedScript]] = {}
        self._failures: dict[str, tuple[Stamp | None, float, BaseException]] = {}
        # Imports mutate sys.meta_path and sys.modules: one load at a time per process.
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
                # The URL leads elsewhere now (a git-sync swap): drop the old file's module,
                # or a worker would keep one copy per revision it ever served.
                self._scripts.pop(script.path, None)
            return None
        return script

    def remember(self, target: Target, script: LoadedScript) -> None:
        self._targets[target] = (
            os.path.join(zone_dir(Path(self.root), target.zone), target.rel_path),
            script,
        )

    def cached(self, path: str) -> LoadedScript | None:
        """The loaded script if nothing it depends on changed since it was imported."""
        script = self._scripts.get(path)
        if script is not None and unchanged(script.stamps):
            return script
        return None

    def load(self, path: str) -> LoadedScript:
        """Import (or re-import) a script; raises ScriptLoadError with the cause chained.

        Imports take turns: helper names are global in sys.modules. Waiting is bounded,
        so an import stuck past every deadline (its worker is then recycled) cannot hold
        a waiting thread forever.
        """
        if not self._lock.acquire(timeout=self.max_timeout):
            raise ScriptTimeout("another script's import is still running")
        try:
            script = self.cached(path)
            if script is None:
                self._scripts.pop(path, None)
                try:
                    script = self._import(path)
                except ScriptLoadError as exc:
                    self.remember_failure(path, exc)
                    raise
                self._scripts[path] = script
                self._failures.pop(path, None)
            return script
        finally:
            self._lock.release()

    def remember_failure(self, path: str, exc: BaseException) -> None:
        self._failures[path] = (stamp(path), time.monotonic(), exc)

    def recent_failure(self, path: str) -> BaseException | None:
        """How the last import of this unchanged file failed, for listings that must not
        re-run a broken script's code on every call; None when it is worth another try."""
        entry = self._failures.get(path)
        if entry is None or entry[0] != stamp(path):
            return None
        return entry[2] if time.monotonic() - entry[1] < FAILURE_RECHECK_SECONDS else None

    def _import(self, path: str) -> LoadedScript:
        own = stamp(path)
        if own is None:  # deleted between lookup and import: as if it never existed
            raise NotFound(path)
        root = root_of(path, self.root)  # the real folder (worktree) this path was found in
        name = "scriptgate_script." + os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        finder = HelperFinder([os.path.dirname(path), os.path.join(root, LIB_DIR)], root)
        before = set(sys.modules)
        sys.meta_path.insert(0, finder)
        try:
            spec = importlib.util.spec_from_file_location(
                name, path, loader=SourceLoader(name, path)
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except ScriptTimeout:
                sys.modules.pop(name, None)
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: the script's fault
                sys.modules.pop(name, None)
                if isinstance(exc, FileNotFoundError) and exc.filename == path:
                    raise NotFound(path) from None
                raise ScriptLoadError(f"import failed: {type(exc).__name__}") from exc
        finally:
            sys.meta_path.remove(finder)
            helpers = self._detach_helpers(set(sys.modules) - before - {name}, root)
        handler = next(
            (getattr(module, n) for n in HANDLER_NAMES if callable(getattr(module, n, None))), None
        )
        if handler is None:
            raise ScriptLoadError("no handle(request) or main(request) function", "no_handler")
        requested = _seconds(module, "TIMEOUT")
        summary, description = _docstring(module)
        try:
            params = read_params(handler)
        except DeclarationError as exc:
            raise ScriptLoadError(str(exc)) from None
        script = LoadedScript(
            path=path,
            module=module,
            handler=handler,
            methods=_methods(module),
            timeout=min(requested or self.default_timeout, self.max_timeout),
            requested_timeout=requested,
            concurrency=_concurrency(module, self.default_concurrency),
            summary=summary,
            description=description,
            params=params,
            stamps=(own, *helpers),
            run_async=_run_async(module),
            job_timeout=_seconds(module, "JOB_TIMEOUT"),
        )
        if script.timeout_capped:
            self.log.warning(
                "%s asks for TIMEOUT = %g s; it gets MAX_SCRIPT_TIMEOUT, %g s",
                os.path.relpath(path, root),
                requested,
                script.timeout,
            )
        return script

    def _detach_helpers(self, new_names: set[str], root: str) -> list[Stamp]:
        """Stamp the helpers a script imported, then drop them from sys.modules.

        Dropping them gives every script its own copy of a same-named helper, and lets an
        edited helper be imported afresh when its script reloads.
        """
        stamps = []
        for mod_name in new_names:
            origin = getattr(sys.modules.get(mod_name), "__file__", None) or ""
            if origin.startswith(root + os.sep):
                sys.modules.pop(mod_name, None)
                helper = stamp(origin)
                if helper is not None:
                    stamps.append(helper)
        return sorted(stamps)
