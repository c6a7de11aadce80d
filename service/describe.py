"""Route details for /_platform/routes?detail=1 and `scriptgate check`.

One reader of the script module contract: the loader. A script is imported (under the
import deadline, as a request would) and its state reported, so a script that fails to
import shows as broken here instead of looking healthy.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from service.deadline import ScriptTimeout
from service.errors import NotFound
from service.loader import DEFAULT_METHODS, ScriptLoadError
from service.resolve import locate, parse_target, url_for_script

if TYPE_CHECKING:
    from service.runtime import Runtime


def describe_route(rt: Runtime, zone: str, path: str) -> dict[str, Any]:
    """{path, url, methods, summary, state, timeout[, async, job_timeout][, error]} for
    one listed script."""
    url = url_for_script(zone, path)
    entry: dict[str, Any] = {"path": path, "url": url}
    settings = rt.settings
    try:
        real = locate(settings.scripts_dir, parse_target(url))
        script = rt.scripts.cached(real) or rt.runners.run(
            lambda: rt.scripts.load(real), settings.script_timeout
        )
    except ScriptLoadError as exc:
        entry.update(
            methods=sorted(DEFAULT_METHODS),
            summary="",
            state=exc.state,
            timeout=settings.script_timeout,
            error=describe_error(exc, real, str(settings.scripts_dir)),
        )
        return entry
    except (ScriptTimeout, NotFound) as exc:
        entry.update(
            methods=sorted(DEFAULT_METHODS),
            summary="",
            state="import_error",
            timeout=settings.script_timeout,
            error="deleted" if isinstance(exc, NotFound) else "import timed out",
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
    return entry


def describe_error(exc: ScriptLoadError, path: str, scripts_dir: str) -> str:
    """The cause's type and message, and its line in the script: never a stack, never
    a path outside the scripts folder."""
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
    message = str(cause).replace(scripts_dir + "/", "")
    return f"{type(cause).__name__}: {message}{where}"
