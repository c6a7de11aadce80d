"""Route details for /_platform/routes?detail=1, health, the API document and `check`.

A script is described by a runner that imported it (loader.py), never by importing it
here. Listings that need every script's details (routes?detail=1, the API document,
`check`) have a runner describe what changed, under the import deadline; health never
waits for one: it reports what is known, and a scanner thread, started by the first
probe, keeps that knowledge current off the probe path. A failed import of an unchanged
file is not retried for a while (backoff.FAILURE_RECHECK_SECONDS, longer for a backed-off
one): listings are polled, and must not start a broken script's runner on every call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.runners.failures import RunnerFailed, ScriptTimeout
from service.scripts.backoff import BackedOff
from service.scripts.loader import DEFAULT_METHODS, LoadedScript, ScriptLoadError
from service.scripts.problems import NoScript
from service.scripts.resolve import (
    ZONES,
    locate,
    located_scripts,
    parse_target,
    url_for_script,
)

if TYPE_CHECKING:
    from service.runtime import Runtime

SCAN_SECONDS = 10.0  # how often the scanner looks for new or changed scripts
DESCRIBE_AT_ONCE = 4  # runners importing scripts at once for one listing


@dataclass(frozen=True)
class ScriptState:
    """A listed script, described (`script`) or not (`state` and `error` say why)."""

    zone: str
    path: str
    url: str
    state: str  # ok, import_error, no_handler, backed_off, unknown (not yet described)
    script: LoadedScript | None = None
    error: str = ""


def script_state(
    rt: Runtime, zone: str, path: str, *, known_only: bool = False, real: str = ""
) -> ScriptState | None:
    """Describe a listed script (cached if unchanged) and say how it went; None when it
    was deleted since it was listed. `known_only` never starts a runner; `real` is the
    script's real path when a listing (`located_scripts`) already found it."""
    url = url_for_script(zone, path)
    try:
        real = real or locate(rt.settings.scripts_dir, parse_target(url))
        script = rt.scripts.cached(real)
        if script is None:
            failure = rt.scripts.recent_failure(real)
            if failure is not None:
                raise failure
            if known_only:
                return ScriptState(zone, path, url, "unknown")
            script, runner = rt.scripts.load(real, rt.runners)
            # Not kept warm: a listing of a thousand scripts must not leave a thousand
            # runners behind; the first call of each starts its own.
            rt.runners.kill(runner)
    except ScriptLoadError as exc:
        return ScriptState(zone, path, url, exc.state, error=rt.secrets.scrub(str(exc)))
    except (ScriptTimeout, BackedOff):
        state = "backed_off" if rt.scripts.is_backed_off(real) else "import_error"
        return ScriptState(zone, path, url, state, error="import timed out")
    except RunnerFailed:
        return ScriptState(zone, path, url, "import_error", error="its runner died")
    except NoScript:
        return None
    return ScriptState(zone, path, url, "ok", script)


def all_states(
    rt: Runtime,
    visible: Callable[[str, str], bool] | None = None,
    *,
    known_only: bool = False,
) -> list[ScriptState]:
    """The state of every listed script (of those `visible(zone, path)` allows), in
    listing order; scripts left out are not described."""
    listed = [
        (zone, path, real)
        for zone in ZONES
        for path, real in located_scripts(rt.settings.scripts_dir, zone)
        if visible is None or visible(zone, path)
    ]
    if known_only:
        found = [script_state(rt, z, p, known_only=True, real=r) for z, p, r in listed]
    else:  # imports wait on their runners: a few at once (in listing order all the same)
        with ThreadPoolExecutor(DESCRIBE_AT_ONCE, thread_name_prefix="scriptgate-describe") as pool:
            found = list(pool.map(lambda i: script_state(rt, i[0], i[1], real=i[2]), listed))
    return [state for state in found if state is not None]


class Scanner:
    """One thread per process that has runners describe new and changed scripts, so
    health reports a broken script without a probe ever waiting for an import."""

    def __init__(self) -> None:
        self.rt: Runtime | None = None
        self.wake = threading.Event()
        self.started = False
        self.lock = threading.Lock()

    def poke(self, rt: Runtime) -> None:
        with self.lock:
            if not self.started:
                self.rt = rt
                self.started = True
                threading.Thread(target=self._loop, name="scriptgate-scanner", daemon=True).start()
        self.wake.set()

    def _loop(self) -> None:
        assert self.rt is not None
        while True:
            self.wake.clear()
            try:
                all_states(self.rt)
            except Exception as exc:  # a platform bug: logged, and tried again later
                self.rt.log.error("script scan failed", exc_info=exc)
            self.wake.wait(SCAN_SECONDS)


def describe_route(rt: Runtime, zone: str, path: str, real: str = "") -> dict[str, Any]:
    """{path, url, methods, summary, state, timeout[, error][, warning][, async,
    job_timeout][, parameters]}; `real` as for script_state."""
    found = script_state(rt, zone, path, real=real) or ScriptState(
        zone, path, url_for_script(zone, path), "import_error", error="deleted"
    )
    entry: dict[str, Any] = {"path": path, "url": found.url}
    script = found.script
    if script is None:
        entry.update(
            methods=sorted(DEFAULT_METHODS),
            summary="",
            state=found.state,
            timeout=rt.settings.script_timeout,
            error=found.error,
        )
        return entry
    entry.update(
        methods=sorted(script.methods),
        summary=script.summary,
        state="ok",
        timeout=script.timeout,
    )
    if script.run_async:  # what a script says about jobs, only when it says something
        entry["async"] = True
    if script.job_timeout is not None:
        entry["job_timeout"] = script.job_timeout
    if script.timeout_capped:
        entry["warning"] = (
            f"TIMEOUT = {script.requested_timeout:g} is over MAX_SCRIPT_TIMEOUT; "
            f"{script.timeout:g} s applies"
        )
    if script.params is not None:
        entry["parameters"] = {p.name: p.where for p in script.params.all}
    return entry
