"""Record what happened to a request: trace headers, span attributes, metrics, log lines.

Nothing here decides anything; the pipeline calls it with the outcome. Every response,
a refusal or a 504 included, goes through `record_request` exactly once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Request, Response
from opentelemetry.trace import Status, StatusCode

from service.observability.logs import format_failure, log_fields, redact_query
from service.observability.tracing import add_trace_headers, span_ids
from service.refusals import CALLER_REFUSALS
from service.scripts.resolve import UNMATCHED, url_for_script

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

# Any other method name is counted as "other", so made-up methods cannot add series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def record_request(rt: Runtime, ctx: RequestContext, req: Request, response: Response) -> None:
    """Trace headers, counters and the one request log record."""
    add_trace_headers(response, ctx.server_span, (ctx.trace_id, ctx.span_id))
    duration = time.perf_counter() - ctx.started
    status = response.status_code
    span = ctx.server_span
    sampled = span.is_recording()
    if sampled:
        attributes = {"scriptgate.zone": ctx.zone, "scriptgate.script": ctx.script}
        if ctx.script != UNMATCHED:  # `GET /api/hello.py`: one name per script, bounded
            route = url_for_script(ctx.zone, ctx.script)
            span.update_name(f"{req.method} {route}")
            attributes["http.route"] = route
        if ctx.caller.key is not None:
            attributes["enduser.id"] = ctx.caller.id
        span.set_attributes(attributes)  # one lock and one limits check, not four
    metrics = rt.metrics
    if metrics is not None:
        method = req.method if req.method in KNOWN_METHODS else "other"
        # A sampled call's trace id is the exemplar of its series: a graph's way to it.
        trace_id = ctx.trace_id if sampled else None
        metrics.observe_request(ctx.zone, ctx.script, method, status, duration, trace_id)
        if ctx.denied_reason is not None:
            metrics.auth_denied.labels(ctx.zone, ctx.denied_reason).inc()
        if ctx.rejected_reason is not None:
            metrics.rejected.labels(ctx.zone, ctx.script, ctx.rejected_reason).inc()
        metrics.count_caller(ctx.zone, ctx.script, ctx.caller.id)
        refusal = ctx.denied_reason or ctx.rejected_reason
        if ctx.caller.key is not None and refusal in CALLER_REFUSALS:
            metrics.caller_refusals.labels(ctx.zone, ctx.caller.id, refusal).inc()
    log_fields(
        rt.log,
        "request",
        {
            "trace_id": ctx.trace_id,
            "span_id": ctx.span_id,
            "zone": ctx.zone,
            "script": ctx.script,
            "method": req.method,
            "path": req.path,
            "query": redact_query(req.args.to_dict(flat=False)) if req.query_string else {},
            "client_ip": ctx.client_ip,
            "caller": ctx.caller.id,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        },
    )


def record_failure(
    rt: Runtime, ctx: RequestContext, span: Any, kind: str, exc: BaseException
) -> None:
    """A script failure on both spans, in the error counter and in an ERROR log record."""
    stack = None
    for s in (span, ctx.server_span):
        if s is not None and s.is_recording():
            # The SDK's record_exception would format the whole stack, unbounded.
            stack = stack or format_failure(exc)
            s.add_event(
                "exception",
                {
                    "exception.type": getattr(exc, "remote_type", "") or type(exc).__name__,
                    "exception.message": str(exc)[:1000],
                    "exception.stacktrace": stack,
                },
            )
            s.set_status(Status(StatusCode.ERROR, f"script {kind}"))
    if rt.metrics is not None:
        sampled = ctx.server_span.is_recording()
        rt.metrics.count_error(ctx.zone, ctx.script, kind, ctx.trace_id if sampled else None)
    trace_id, span_id = span_ids(span) if span is not None else (ctx.trace_id, ctx.span_id)
    rt.log.error(
        f"script {kind}",
        exc_info=exc,
        extra={
            "trace_id": trace_id,
            "span_id": span_id,
            "zone": ctx.zone,
            "script": ctx.script,
            "kind": kind,
        },
    )
