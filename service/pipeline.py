"""The request pipeline: every request, platform endpoints included, in one place.

    context   zone, client (already the real one: access.RealClient), server span
    access    API_TRUSTED_IPS, the zone's allowlist, the zone's key     (access.py)
    caller    the key's expiry and rate limit, its last use             (callers.py)
    lookup    a platform view, or the script: scope, resolve, import if changed
    checks    method, body size, declared parameters                    (params.py)
    job?      `Prefer: respond-async` or ASYNC = True: queue it, 202     (jobs/http.py)
    run       bulkhead slot, then the handler under its deadline         (deadline.py)
    convert   what the handler returned becomes a response               (convert.py)
    record    trace headers, metrics, the request log line               (record.py)

A stage that refuses raises a `RequestError`; `handle_request` renders it with the one
error function and records it like any other response.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Request, Response, request
from opentelemetry import trace
from werkzeug.exceptions import HTTPException

from service.access import authorize, check_scope
from service.callers import hand_over
from service.convert import to_response
from service.deadline import ScriptStopped, ScriptTimeout
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
from service.jobs.http import start_job, wants_job
from service.loader import LoadedScript, ScriptLoadError
from service.metrics import ERROR_KINDS
from service.params import arguments
from service.platform import platform_view
from service.record import RequestContext, record_failure, record_request
from service.resolve import PLATFORM_ZONE, Target, locate, parse_target, zone_of
from service.runtime import Runtime, runtime
from service.scriptlog import serving

T = TypeVar("T")


def handle_request() -> Response:
    """The Flask view for every URL: a request's whole story, top to bottom."""
    rt = runtime()
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = RequestContext(zone_of(req.path)[0], req.remote_addr or "", trace.get_current_span())
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
    keyring = rt.callers.keyring()
    ctx.caller = authorize(ctx.zone, req.path, ctx.client_ip, req.headers, rt.settings, keyring)
    rt.callers.admit(ctx.caller)
    if ctx.zone == PLATFORM_ZONE:
        view = platform_view(req.path)
        ctx.script = view.name
        check_scope(ctx.caller, ctx.zone, view.name, req.method)
        check_method(req.method, view.methods)
        return view.func(rt, req)
    target = parse_target(req.path)
    check_scope(ctx.caller, ctx.zone, target.rel_path, req.method)
    script = lookup(rt, ctx, target)
    check_method(req.method, script.methods)
    check_body(req, rt.settings.max_body_bytes)
    values = arguments(script.params, req)  # a bad parameter: 400, nothing queued or run
    if wants_job(req, script):  # `Prefer: respond-async` or ASYNC = True: 202, runs later
        return start_job(rt, ctx, req)
    hand_over(ctx.caller, req.environ)
    return run(rt, ctx, req, script, values)


def lookup(rt: Runtime, ctx: RequestContext, target: Target) -> LoadedScript:
    """The script for this target, imported (under the import deadline) if it changed."""
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
            rt.metrics.rejected.labels(ctx.zone, ctx.script, "concurrency")
            rt.metrics.script_in_progress.labels(ctx.zone, ctx.script)  # at 0 in this worker
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
    """Take a slot of the script's bulkhead, then run and convert under its deadline;
    the handler gets its declared parameters' values as keyword arguments.

    The slot and the in-flight gauge are given back when the script's code has really
    stopped (`after`), not when its caller got a 504: an abandoned script still counts.
    """
    releases: list[Callable[[], None]] = []
    if script.concurrency:
        release = rt.bulkhead.take(f"{ctx.zone}:{ctx.script}", script.concurrency)
        if release is None:
            raise TooManyRequests("concurrency")
        releases.append(release)
    if rt.metrics is not None:
        releases.append(rt.metrics.script_started(ctx.zone, ctx.script))
    return call_handler(
        rt,
        ctx,
        lambda: to_response(script.handler(req, **(values or {}))),
        script.timeout,
        after=lambda: [release() for release in releases],
    )


def call_handler(
    rt: Runtime,
    ctx: RequestContext,
    call: Callable[[], T],
    seconds: float,
    stop: Callable[[], bool] | None = None,
    after: Callable[[], None] | None = None,
) -> T | Response:
    """A script's code on a runner thread under its deadline, in a `script.run` span.

    Its failures become the contract's answers: 504 at the deadline, its own 4xx, 500
    for anything it raised. Jobs call this too, with `stop` (a cancel request), which
    ends in ScriptStopped for the job worker to report.
    """
    # A request whose span is sampled out would get a child span sampled out too: none is
    # made, and the script's log lines carry the server span's id.
    child = (
        rt.tracer.start_as_current_span(
            "script.run", record_exception=False, set_status_on_exception=False
        )
        if ctx.server_span.is_recording()
        else contextlib.nullcontext()
    )
    with child as span:
        try:
            return rt.runners.run(call, seconds, stop, after)
        except ScriptStopped:
            raise
        except ScriptTimeout as exc:
            record_failure(rt, ctx, span, "timeout", exc)
            raise ScriptTimedOut() from None
        except HTTPException as exc:
            return caller_error(exc)
        except BaseException as exc:  # a script's own BaseException too: the script's fault
            record_failure(rt, ctx, span, "exception", exc)
            raise ScriptFailed() from exc


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
