"""The /_platform blueprint: health, routes and metrics, over the data the app itself uses."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from service.describe import describe_route
from service.observe import state
from service.resolve import ZONES, list_scripts
from service.runtime import runtime

bp = Blueprint("platform", __name__, url_prefix="/_platform")


@bp.before_request
def _label() -> None:
    state().script = (request.endpoint or "").rpartition(".")[2]


def _routes(detail: bool) -> dict[str, list]:
    settings = runtime().settings
    routes: dict[str, list] = {}
    for zone in ZONES:
        paths = list_scripts(settings.scripts_dir, zone)
        if detail:
            routes[zone] = [describe_route(settings.scripts_dir, zone, p) for p in paths]
        else:
            routes[zone] = paths
    return routes


@bp.get("/health")
def health() -> Response:
    rt = runtime()
    totals = rt.metrics.totals() if rt.metrics is not None else None
    scripts = sum(len(list_scripts(rt.settings.scripts_dir, zone)) for zone in ZONES)
    return jsonify(
        status="ok",
        uptime_sec=rt.uptime(),
        requests_total=totals.requests_total if totals else None,
        errors_total=totals.errors_total if totals else None,
        scripts=scripts,
        version=rt.settings.version,
    )


@bp.get("/routes")
def routes() -> Response:
    detail = request.args.get("detail", "").lower() in ("1", "true", "yes")
    return jsonify(_routes(detail))


@bp.get("/metrics")
def metrics() -> Response:
    rt = runtime()
    if rt.metrics is None:
        return Response("metrics are turned off (METRICS=off)\n", 404, content_type="text/plain")
    if request.args.get("format") == "json":
        totals = rt.metrics.totals()
        return jsonify(
            uptime_sec=rt.uptime(),
            requests_total=totals.requests_total,
            requests_by_area=totals.requests_by_area,
            errors_total=totals.errors_total,
        )
    body, content_type = rt.metrics.exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)
