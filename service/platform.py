"""The /_platform endpoints: health, routes, metrics, the API document and its docs page,
over the data the app itself uses.

Plain functions in a table, so the pipeline runs them through the same stages as a
script (access, method check, record) and a script can never shadow one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Request, Response, jsonify

from service.callers import keys_view
from service.describe import all_states, describe_route
from service.docs import ASSETS, docs_asset, docs_page
from service.errors import NotFound
from service.jobs.follow import job_events, job_logs
from service.jobs.http import (
    EVENTS_SUFFIX,
    JOBS_PREFIX,
    LOGS_SUFFIX,
    RESULT_SUFFIX,
    job_list,
    job_result,
    job_status,
)
from service.openapi import openapi_document
from service.resolve import PLATFORM_PREFIX, ZONES, list_scripts
from service.revision import current_revision, revision_of, served_root

if TYPE_CHECKING:
    from service.record import RequestContext
    from service.runtime import Runtime

READ_METHODS = frozenset({"GET", "HEAD"})
REVISION_HEADER = "X-Scripts-Revision"


@dataclass(frozen=True)
class PlatformView:
    """A platform endpoint. `scoped`: a key calling it needs a platform scope for it;
    the job views instead decide per job, from the caller (jobs.http.may_see)."""

    name: str
    func: Callable[[Runtime, RequestContext, Request], Response]
    methods: frozenset[str] = READ_METHODS
    scoped: bool = True


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
        paths = list_scripts(root, zone)
        listing[zone] = [describe_route(rt, zone, p) for p in paths] if detail else paths
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
        PlatformView("health", health),
        PlatformView("routes", routes),
        PlatformView("metrics", metrics),
        PlatformView("keys", keys_view),
        PlatformView("openapi.json", openapi_document),
        PlatformView("docs", docs_page),
        PlatformView("jobs", job_list, scoped=False),
        *(PlatformView(f"docs/{name}", docs_asset) for name in ASSETS),
    )
}


# Views under a path prefix, first match wins: (prefix, suffix, view). The view reads
# the rest of the path (a job id) itself.
PREFIX_VIEWS = (
    (JOBS_PREFIX, RESULT_SUFFIX, PlatformView("jobs/result", job_result, scoped=False)),
    (JOBS_PREFIX, LOGS_SUFFIX, PlatformView("jobs/logs", job_logs, scoped=False)),
    (JOBS_PREFIX, EVENTS_SUFFIX, PlatformView("jobs/events", job_events, scoped=False)),
    (JOBS_PREFIX, "", PlatformView("jobs", job_status, READ_METHODS | {"DELETE"}, False)),
)


def platform_view(path: str) -> PlatformView:
    view = VIEWS.get(path)
    if view is None:
        matches = (v for p, s, v in PREFIX_VIEWS if path.startswith(p) and path.endswith(s))
        view = next(matches, None)
    if view is None:
        raise NotFound(path)
    return view
