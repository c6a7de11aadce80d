"""Route details for /_platform/routes?detail=1, health, the API document and `check`.

One reader of the script module contract: the loader. A script is imported (under the
import deadline, as a request would) and its state reported, so a script that fails to
import shows as broken here instead of looking healthy. A failed import of an unchanged
file is not retried for a while (loader.FAILURE_RECHECK_SECONDS): listings are polled,
and must not run a broken script's code on every call.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.deadline import ScriptTimeout
from service.errors import NotFound
from service.loader import DEFAULT_METHODS, LoadedScript, ScriptLoadError
from service.resolve import ZONES, list_scripts, locate, parse_target, url_for_script
from service.revision import root_of

if TYPE_CHECKING:
    from service.runtime import Runtime

REQUIREMENTS_FILE = "requirements.txt"  # in the scripts folder: packages scripts import


@dataclass(frozen=True)
class ScriptState:
    """A listed script, loaded (`script`) or not (`state` and `error` say why)."""

    zone: str
    path: str
    url: str
    state: str  # ok, import_error, no_handler
    script: LoadedScript | None = None
    error: str = ""


def script_state(rt: Runtime, zone: str, path: str) -> ScriptState | None:
    """Load a listed script as a request would (cached if unchanged) and say how it went;
    None when it was deleted since it was listed."""
    url = url_for_script(zone, path)
    settings = rt.settings
    real = ""
    try:
        real = locate(settings.scripts_dir, parse_target(url))
        script = rt.scripts.cached(real)
        if script is None:
            failure = rt.scripts.recent_failure(real)
            if failure is not None:
                raise failure
            script = rt.runners.run(lambda: rt.scripts.load(real), settings.script_timeout)
    except ScriptLoadError as exc:
        root = root_of(real, settings.scripts_dir)  # the real folder, past a git-sync link
        error = rt.secrets.scrub(describe_error(exc, real, root))
        return ScriptState(zone, path, url, exc.state, error=error)
    except ScriptTimeout as exc:
        if rt.scripts.recent_failure(real) is not exc:  # a new timeout, not the remembered one
            rt.scripts.remember_failure(real, exc)
        return ScriptState(zone, path, url, "import_error", error="import timed out")
    except NotFound:
        return None
    return ScriptState(zone, path, url, "ok", script)


def all_states(rt: Runtime, visible: Callable[[str, str], bool] | None = None) -> list[ScriptState]:
    """The state of every listed script (of those `visible(zone, path)` allows), in
    listing order; scripts left out are not imported."""
    found = (
        script_state(rt, zone, path)
        for zone in ZONES
        for path in list_scripts(rt.settings.scripts_dir, zone)
        if visible is None or visible(zone, path)
    )
    return [state for state in found if state is not None]


def describe_route(rt: Runtime, zone: str, path: str) -> dict[str, Any]:
    """{path, url, methods, summary, state, timeout[, error][, warning][, async,
    job_timeout][, parameters]}."""
    found = script_state(rt, zone, path) or ScriptState(
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


# An absolute path in an exception's text (an ImportError names the library's file).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\"()]+")


def _shorten(match: re.Match[str]) -> str:
    return "…/" + match.group(0).rstrip("/").rpartition("/")[2]


def describe_error(exc: ScriptLoadError, path: str, scripts_dir: str) -> str:
    """The cause's type and message, and its line in the script: never a stack, never
    a path outside the scripts folder. A missing package says where packages go."""
    cause = exc.__cause__
    if cause is None:
        return str(exc)
    where = ""
    if isinstance(cause, SyntaxError) and cause.lineno:
        where = f" (line {cause.lineno})"
    else:
        lines = [f.lineno for f in traceback.extract_tb(cause.__traceback__) if f.filename == path]
        if lines:
            where = f" (line {lines[-1]})"
    message = _ABSOLUTE_PATH.sub(_shorten, str(cause).replace(scripts_dir + "/", ""))
    hint = ""
    if isinstance(cause, ModuleNotFoundError) and cause.name and not cause.name.startswith("_"):
        package = cause.name.partition(".")[0]
        hint = f": add {package!r} to {REQUIREMENTS_FILE} in the scripts folder and install it"
    return f"{type(cause).__name__}: {message}{where}{hint}"
