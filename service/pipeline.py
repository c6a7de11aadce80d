"""The request pipeline: every request, platform endpoints included, in one place.

    context   zone, client (already the real one: access.RealClient), server span
    access    API_TRUSTED_IPS, the zone's allowlist, the zone's key     (access.py)
    lookup    a platform view, or the script: resolve, import if changed (loader.py)
    checks    method, body size, declared parameters                    (params.py)
    run       bulkhead slot, then the handler under its deadline         (deadline.py)
    convert   what the handler returned becomes a response               (convert.py)
    record    trace headers, metrics, the request log line               (record.py)

A stage that refuses raises a `RequestError`; `handle_request` renders it with the one
error function and records it like any other response.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from flask import Request, Response, request
from opentelemetry import trace
from werkzeug.exceptions import HTTPException

from service.access import authorize
from service.convert import to_response
from service.deadline import ScriptTimeout
from service.errors import (
    AccessDenied,
    CallerError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestError,
    ScriptFailed,
    ScriptTimedOut,
    TooManyRequests,
    render_error,
)
from service.loader import LoadedScript, ScriptLoadError
from service.metrics import ERROR_KINDS
from service.params import arguments
from service.platform import platform_view
from service.record import RequestContext, record_failure, record_request
from service.resolve import PLATFORM_ZONE, locate, parse_target, zone_of
from service.runtime import Runtime, runtime
from service.scriptlog import serving


def handle_request() -> Response:
    """The Flask view for every URL: a request's whole story, top to bottom."""
    rt = runtime()
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = RequestContext(zone_of(req.path)[0], req.remote_addr or "", trace.get_current_span())
    ctx.server_span.set_attribute("scriptgate.zone", ctx.zone)
    in_progress = rt.metrics.in_progress_for(ctx.zone) if rt.metrics is not None else None
    if in_progress is not None:
        in_progress.inc()
    try:
        with serving(rt.log, ctx):  # a script's own log lines carry this request's fields
            response = respond(rt, ctx, req)
    except RequestError as exc:
        if isinstance(exc, AccessDenied):
            ctx.denied_reason = exc.reason
        elif isinstance(exc, TooManyRequests):
            ctx.rejected_reason = exc.reason
        response = render_error(exc, ctx.trace_id)
    except Exception as exc:  # a platform bug: the log has it whole, the client a 500
        rt.log.error("unhandled error", exc_info=exc, extra={"trace_id": ctx.trace_id})
        response = render_error(ScriptFailed(), ctx.trace_id)
    finally:
        if in_progress is not None:
            in_progress.dec()
    record_request(rt, ctx, req, response)
    return response


def respond(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    if rt.platform_only and ctx.zone != PLATFORM_ZONE:  # the platform plane runs no script
        raise NotFound(req.path)
    authorize(ctx.zone, ctx.client_ip, req.headers, rt.settings)
    if ctx.zone == PLATFORM_ZONE:
        view = platform_view(req.path)
        ctx.script = view.name
        check_method(req.method, view.methods)
        return view.func(rt, req)
    script = lookup(rt, ctx, req.path)
    check_method(req.method, script.methods)
    check_body(req, rt.settings.max_body_bytes)
    values = arguments(script.params, req)
    return run(rt, ctx, req, script, values)


def lookup(rt: Runtime, ctx: RequestContext, path: str) -> LoadedScript:
    """The script for this path, imported (under the import deadline) if it changed."""
    target = parse_target(path)
    script = rt.scripts.cached_target(target)
    if script is not None:
        ctx.script = target.rel_path
        return script
    real_path = locate(rt.settings.scripts_dir, target)
    ctx.script = target.rel_path
    script = rt.scripts.cached(real_path)
    if script is None:
        script = import_script(rt, ctx, real_path)
    rt.scripts.remember(target, script)
    return script


def import_script(rt: Runtime, ctx: RequestContext, path: str) -> LoadedScript:
    with rt.tracer.start_as_current_span("script.import") as span:
        span.set_attribute("code.filepath", path)
        try:
            script = rt.runners.run(lambda: rt.scripts.load(path), rt.settings.script_timeout)
        except ScriptLoadError as exc:
            record_failure(rt, ctx, span, "import", exc)
            raise ScriptFailed() from exc
        except ScriptTimeout as exc:
            record_failure(rt, ctx, span, "timeout", exc)
            raise ScriptTimedOut() from None
    if rt.metrics is not None:
        # Error series start at 0, so increase() sees a script's first failure too.
        for kind in ERROR_KINDS:
            rt.metrics.script_errors.labels(ctx.zone, ctx.script, kind)
        if script.concurrency:
            rt.metrics.concurrency_limit.labels(ctx.zone, ctx.script).set(script.concurrency)
    return script


def check_method(method: str, allowed: frozenset[str]) -> None:
    if method not in allowed:
        raise MethodNotAllowed(allowed)


def check_body(req: Request, limit: int) -> None:
    """Refuse a body over the limit before the script can read it.

    A chunked body has no Content-Length; werkzeug would silently cut it at the limit
    and let the script run on a truncated body, so it is read here (up to limit + 1).
    """
    if req.content_length is not None:
        if req.content_length > limit:
            raise PayloadTooLarge()
        return
    if "chunked" not in req.headers.get("Transfer-Encoding", "").lower():
        return
    data = req.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge()
    req.environ["wsgi.input"] = io.BytesIO(data)
    req.environ["CONTENT_LENGTH"] = str(len(data))
    req.environ.pop("HTTP_TRANSFER_ENCODING", None)


def run(
    rt: Runtime,
    ctx: RequestContext,
    req: Request,
    script: LoadedScript,
    values: dict[str, Any] | None = None,
) -> Response:
    """Hold a slot of the script's bulkhead, then run and convert under its deadline;
    the handler gets its declared parameters' values as keyword arguments."""
    with contextlib.ExitStack() as stack:
        if script.concurrency:
            name = f"{ctx.zone}:{ctx.script}"
            if not stack.enter_context(rt.bulkhead.slot(name, script.concurrency)):
                raise TooManyRequests("concurrency")
        if rt.metrics is not None:
            stack.enter_context(rt.metrics.script_in_flight(ctx.zone, ctx.script))
        span = stack.enter_context(
            rt.tracer.start_as_current_span(
                "script.run", record_exception=False, set_status_on_exception=False
            )
        )
        try:
            return rt.runners.run(
                lambda: to_response(script.handler(req, **(values or {}))), script.timeout
            )
        except ScriptTimeout as exc:
            record_failure(rt, ctx, span, "timeout", exc)
            raise ScriptTimedOut() from None
        except HTTPException as exc:
            return caller_error(exc)
        except BaseException as exc:  # a script's own BaseException too: the script's fault
            record_failure(rt, ctx, span, "exception", exc)
            raise ScriptFailed() from exc
    raise AssertionError("unreachable")  # pragma: no cover


def caller_error(exc: HTTPException) -> Response:
    """A script's `abort(...)` or a bad request body it found: the caller's error.

    A redirect or a response the script attached is answered as it is; an error status
    becomes the JSON error body with the exception's own description.
    """
    status = exc.code or 500
    if exc.response is not None or status < 400:
        return exc.get_response()
    if status == PayloadTooLarge.status:
        raise PayloadTooLarge()
    description = _own_description(exc) or _own_description(exc.__cause__) or exc.name
    description = description if description != exc.name else description.lower()
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    raise CallerError(status, description or "error", headers)


def _own_description(exc: BaseException | None) -> str | None:
    """An HTTPException's description when someone wrote one, not its class default.

    Flask re-raises a bad JSON body as a bare BadRequest outside debug mode; the cause
    keeps the parser's message ("Failed to decode JSON object: ..."), which names no
    path and no secret and tells the caller what to fix.
    """
    if isinstance(exc, HTTPException) and exc.description != type(exc).description:
        return exc.description
    return None
