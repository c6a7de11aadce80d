"""Per-request hooks around every view: zone and client, counters, the request log line.

Nothing here runs inside a script; a script only ever sees Flask's request.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from opentelemetry import trace

from service.access import AccessDenied, client_ip, ip_allowed
from service.logs import redact_query
from service.resolve import PLATFORM_ZONE, UNMATCHED, zone_of
from service.runtime import runtime
from service.tracing import add_trace_headers

PLATFORM_PREFIX = "/_platform"
# Any other method name is counted as "other", so made-up methods cannot add series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_zone(path: str) -> str:
    if path == PLATFORM_PREFIX or path.startswith(PLATFORM_PREFIX + "/"):
        return PLATFORM_ZONE
    return zone_of(path)[0]


def begin_request() -> None:
    """Label the request and apply the global IP allowlist, before any view runs."""
    rt = runtime()
    g.started = time.perf_counter()
    g.zone = zone = request_zone(request.path)
    g.script = UNMATCHED
    g.server_span = span = trace.get_current_span()
    span.set_attribute("scriptgate.zone", zone)
    if rt.metrics is not None:
        rt.metrics.in_progress.labels(zone).inc()
        g.counted_in_progress = True
    g.client_ip = client_ip(
        request.remote_addr, request.headers.getlist("X-Forwarded-For"), rt.settings.trusted_proxies
    )
    if not ip_allowed(g.client_ip, rt.settings.api_trusted_ips):
        raise AccessDenied("ip")


def finish_request(response: Response) -> Response:
    """Trace headers, counters and the one request log record, errors included."""
    rt = runtime()
    add_trace_headers(response)
    zone = g.get("zone") or request_zone(request.path)
    script = g.get("script", UNMATCHED)
    started = g.get("started")
    duration = time.perf_counter() - started if started is not None else 0.0
    status = response.status_code
    span = trace.get_current_span()
    span.set_attribute("scriptgate.script", script)
    if rt.metrics is not None:
        method = request.method if request.method in KNOWN_METHODS else "other"
        rt.metrics.requests.labels(zone, script, method, str(status)).inc()
        rt.metrics.duration.labels(zone, script).observe(duration)
        reason = g.get("denied_reason")
        if reason is not None:
            rt.metrics.auth_denied.labels(zone, reason).inc()
    context = span.get_span_context()
    rt.log.info(
        "request",
        extra={
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "zone": zone,
            "script": script,
            "method": request.method,
            "path": request.path,
            "query": redact_query(request.args.to_dict(flat=False)),
            "client_ip": g.get("client_ip") or request.remote_addr,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        },
    )
    return response


def end_request(exc: BaseException | None) -> None:
    rt = runtime()
    if rt.metrics is not None and g.pop("counted_in_progress", False):
        rt.metrics.in_progress.labels(g.zone).dec()


def install(app: Flask) -> None:
    app.before_request(begin_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)
