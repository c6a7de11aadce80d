"""The /_platform endpoints: health, routes, metrics, the API document and its docs page,
over the data the app itself uses.

Plain functions in a table, so the pipeline runs them through the same stages as a
script (access, method check, record) and a script can never shadow one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Request, Response, jsonify

from service.access.callers import keys_view
from service.access.policy import Guard
from service.jobs.follow import job_events, job_logs
from service.jobs.history import job_list
from service.jobs.http import (
    EVENTS_SUFFIX,
    JOBS_PREFIX,
    LOGS_SUFFIX,
    RESULT_SUFFIX,
    job_result,
    job_status,
)
from service.platform.console import ASSETS as CONSOLE_ASSETS
from service.platform.console import console_asset, console_page, console_scripts, platform_root
from service.platform.docs import ASSETS, docs_asset, docs_page
from service.platform.openapi import openapi_document
from service.schedules.http import PAUSE, RESUME, SCHEDULES_PREFIX, schedule_list, schedule_steer
from service.scripts.describe import all_states, describe_route
from service.scripts.resolve import PLATFORM_PREFIX, ZONES, located_scripts
from service.scripts.revision import current_revision, revision_of, served_root

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

READ_METHODS = frozenset({"GET", "HEAD"})
POST = frozenset({"POST"})
REVISION_HEADER = "X-Scripts-Revision"


@dataclass(frozen=True)
class PlatformView:
    """A platform endpoint and its guard (access.policy.Guard), declared together: a
    guard has no default, so no view is open because someone forgot a list."""

    name: str
    func: Callable[[Runtime, RequestContext, Request], Response]
    guard: Guard
    methods: frozenset[str] = READ_METHODS


def health(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    totals = rt.metrics.totals() if rt.metrics is not None else None
    rt.scanner.poke(rt)  # finds new and changed scripts off this probe's path
    states = all_states(rt, known_only=True)  # never waits for an import
    return jsonify(
        status="ok",
        uptime_sec=rt.uptime(),
        requests_total=totals.requests_total if totals else None,
        errors_total=totals.errors_total if totals else None,
        scripts=len(states),
        scripts_broken=sum(state.state not in ("ok", "unknown") for state in states),
        scripts_backed_off=sum(state.state == "backed_off" for state in states),
        version=rt.settings.version,
        scripts_revision=current_revision(rt.settings.scripts_dir),  # git-sync's commit
    )


def routes(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    detail = req.args.get("detail", "").lower() in ("1", "true", "yes")
    listing: dict[str, list] = {}
    root = Path(served_root(rt.settings.scripts_dir))  # one revision for the whole listing
    for zone in ZONES:
        found = located_scripts(root, zone)
        if detail:
            listing[zone] = [describe_route(rt, zone, path, real) for path, real in found]
        else:
            listing[zone] = [path for path, _ in found]
    response = jsonify(listing)
    # A header, not a key: the body's keys are the zones (the contract).
    revision = revision_of(str(root))
    if revision is not None:
        response.headers[REVISION_HEADER] = revision
    return response


def metrics(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    if rt.metrics is None:
        return Response("metrics are turned off (METRICS=off)\n", 404, content_type="text/plain")
    if req.args.get("format") == "json":
        totals = rt.metrics.totals()
        return jsonify(
            uptime_sec=rt.uptime(),
            requests_total=totals.requests_total,
            requests_by_area=totals.requests_by_area,
            errors_total=totals.errors_total,
        )
    body, content_type = rt.metrics.exposition(req.headers.get("Accept"))
    return Response(body, content_type=content_type)


VIEWS = {
    f"{PLATFORM_PREFIX}/{view.name}": view
    for view in (
        PlatformView("health", health, Guard.OPEN),  # probes
        PlatformView("routes", routes, Guard.TRUSTED),
        PlatformView("metrics", metrics, Guard.TRUSTED),
        PlatformView("keys", keys_view, Guard.KEY),
        PlatformView("openapi.json", openapi_document, Guard.OPEN),  # filtered per caller
        PlatformView("docs", docs_page, Guard.OPEN),
        PlatformView("jobs", job_list, Guard.CALLER_KEY),
        PlatformView("schedules", schedule_list, Guard.TRUSTED),  # as routes: names scripts
        *(PlatformView(f"docs/{name}", docs_asset, Guard.OPEN) for name in ASSETS),
        PlatformView("", platform_root, Guard.OPEN),  # leads to the console
        PlatformView("console", console_page, Guard.OPEN),
        *(PlatformView(f"console/{name}", console_asset, Guard.OPEN) for name in CONSOLE_ASSETS),
        PlatformView(  # filtered per caller; it reads the guards of this table
            "console/scripts",
            functools.partial(console_scripts, view_at=lambda path: platform_view(path)),
            Guard.CALLER_IF_ANY,
        ),
    )
}


# Views under a path prefix, first match wins: (prefix, suffix, view). The view reads
# the rest of the path (a job id) itself.
PREFIX_VIEWS = (
    # Pause and resume: a key with the `platform:schedules` scope, always.
    (SCHEDULES_PREFIX, PAUSE, PlatformView("schedules", schedule_steer, Guard.KEY, POST)),
    (SCHEDULES_PREFIX, RESUME, PlatformView("schedules", schedule_steer, Guard.KEY, POST)),
    (JOBS_PREFIX, RESULT_SUFFIX, PlatformView("jobs/result", job_result, Guard.CALLER)),
    (JOBS_PREFIX, LOGS_SUFFIX, PlatformView("jobs/logs", job_logs, Guard.CALLER)),
    (JOBS_PREFIX, EVENTS_SUFFIX, PlatformView("jobs/events", job_events, Guard.CALLER)),
    (JOBS_PREFIX, "", PlatformView("jobs", job_status, Guard.CALLER, READ_METHODS | {"DELETE"})),
)


def platform_view(path: str) -> PlatformView | None:
    """The view serving this /_platform path, or None (a 404, after the allowlists)."""
    view = VIEWS.get(path)
    if view is None:
        matches = (v for p, s, v in PREFIX_VIEWS if path.startswith(p) and path.endswith(s))
        view = next(matches, None)
    return view
