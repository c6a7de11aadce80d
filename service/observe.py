"""Per-request hooks around every view: zone and client, counters, the request log line.

Nothing here runs inside a script; a script only ever sees Flask's request. The hooks
keep what they learn in one RequestState (reached through `g` once per hook) because
every access through Flask's context proxies costs about a microsecond.
"""

from __future__ import annotations

import time
from typing import Any

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


class RequestState:
    """What the hooks and the view learn about one request."""

    __slots__ = (
        "client_ip",
        "denied_reason",
        "in_progress",
        "script",
        "server_span",
        "started",
        "zone",
    )

    def __init__(self, zone: str, server_span: Any) -> None:
        self.started = time.perf_counter()
        self.zone = zone
        self.script = UNMATCHED
        self.server_span = server_span
        self.client_ip = ""
        self.denied_reason: str | None = None
        self.in_progress: Any = None


def request_zone(path: str) -> str:
    if path == PLATFORM_PREFIX or path.startswith(PLATFORM_PREFIX + "/"):
        return PLATFORM_ZONE
    return zone_of(path)[0]


def state() -> RequestState:
    """This request's state; created on first use (a request rejected before the hooks)."""
    current = g.get("sg")
    if current is None:
        current = g.sg = RequestState(request_zone(request.path), trace.get_current_span())
    return current


def begin_request() -> None:
    """Label the request and apply the global IP allowlist, before any view runs."""
    rt = runtime()
    req = request._get_current_object()  # type: ignore[attr-defined]
    span = trace.get_current_span()
    st = g.sg = RequestState(request_zone(req.path), span)
    span.set_attribute("scriptgate.zone", st.zone)
    if rt.metrics is not None:
        st.in_progress = rt.metrics.in_progress_for(st.zone)
        st.in_progress.inc()
    settings = rt.settings
    forwarded = req.headers.getlist("X-Forwarded-For") if settings.trusted_proxies else ()
    st.client_ip = client_ip(req.remote_addr, forwarded, settings.trusted_proxies)
    if settings.api_trusted_ips and not ip_allowed(st.client_ip, settings.api_trusted_ips):
        raise AccessDenied("ip")


def finish_request(response: Response) -> Response:
    """Trace headers, counters and the one request log record, errors included."""
    rt = runtime()
    req = request._get_current_object()  # type: ignore[attr-defined]
    st = state()
    add_trace_headers(response)
    duration = time.perf_counter() - st.started
    status = response.status_code
    span = trace.get_current_span()
    span.set_attribute("scriptgate.script", st.script)
    if rt.metrics is not None:
        method = req.method if req.method in KNOWN_METHODS else "other"
        rt.metrics.observe_request(st.zone, st.script, method, status, duration)
        if st.denied_reason is not None:
            rt.metrics.auth_denied.labels(st.zone, st.denied_reason).inc()
    context = span.get_span_context()
    rt.log.info(
        "request",
        extra={
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "zone": st.zone,
            "script": st.script,
            "method": req.method,
            "path": req.path,
            "query": redact_query(req.args.to_dict(flat=False)) if req.query_string else {},
            "client_ip": st.client_ip or req.remote_addr,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        },
    )
    return response


def end_request(exc: BaseException | None) -> None:
    st = g.get("sg")
    if st is not None and st.in_progress is not None:
        st.in_progress.dec()
        st.in_progress = None


def install(app: Flask) -> None:
    app.before_request(begin_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)
