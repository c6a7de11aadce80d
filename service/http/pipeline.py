"""The request pipeline: every request, platform endpoints included, in one place.

    context   zone, client (already the real one: access/clients.py), server span
    access    API_TRUSTED_IPS, the zone's allowlist, the zone's key or the view's guard
              (access/guard.py); what the caller may do: access/policy.py `allowed`
    caller    the key's expiry and rate limit, its last use             (callers.py)
    lookup    a platform view, or the script: scope, resolve, described by a runner
    checks    method, body size                                          (loader.py)
    job?      `Prefer: respond-async` or ASYNC = True: queue it, 202     (jobs/http.py)
    run       bulkhead slot, then the call in the script's runner (call.py, runners/)
              (its parameters, handler and conversion run there)
    record    trace headers, metrics, the request log line               (record.py)

A stage that refuses raises a `RequestError`; `handle_request` renders it with the one
error function and records it like any other response.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

from flask import Request, Response, request
from opentelemetry import trace

from service.access.callers import hand_over
from service.access.guard import authorize, check_call, check_view
from service.access.policy import Guard
from service.http.call import CallHooks, call_handler, streamed
from service.http.context import RequestContext
from service.http.errors import (
    AccessDenied,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestError,
    ScriptFailed,
    ScriptTimedOut,
    TooManyRequests,
    Unavailable,
    refusal_of,
    render_error,
)
from service.jobs.http import start_job, wants_job
from service.observability.catalog import ERROR_KINDS
from service.observability.record import record_failure, record_request
from service.observability.scriptlog import ScriptLines
from service.observability.tracing import add_trace_headers, end_server_span_later
from service.platform.views import platform_view
from service.runners.failures import RunnerFailed, ScriptTimeout
from service.runners.stream import RunnerStream
from service.runtime import Runtime, runtime
from service.scripts.backoff import BackedOff
from service.scripts.loader import LoadedScript, ScriptLoadError
from service.scripts.problems import ScriptProblem
from service.scripts.resolve import PLATFORM_ZONE, Target, locate, parse_target, zone_of


def handle_request() -> Response:
    """The Flask view for every URL: a request's whole story, top to bottom."""
    rt = runtime()
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = RequestContext(zone_of(req.path)[0], req.remote_addr or "", trace.get_current_span())
    in_progress = rt.metrics.in_progress_for(ctx.zone) if rt.metrics is not None else None
    if in_progress is not None:
        in_progress.inc()
    stream = None
    try:
        response = respond(rt, ctx, req)
        stream = streamed(response)
    except (RequestError, ScriptProblem) as problem:
        exc = refusal_of(problem)
        if isinstance(exc, AccessDenied):
            ctx.denied_reason = exc.reason
        elif isinstance(exc, TooManyRequests):
            ctx.rejected_reason = exc.reason
        response = render_error(exc, ctx.trace_id)
    except Exception as exc:  # a platform bug: the log has it whole, the client a 500
        rt.log.error("unhandled error", exc_info=exc, extra={"trace_id": ctx.trace_id})
        response = render_error(ScriptFailed(), ctx.trace_id)
    finally:
        if in_progress is not None and stream is None:
            in_progress.dec()
    on_close = when_closed(response, stream, ctx.zone)
    if on_close is not None:
        # Its log line, duration and server span are the whole stream's: written when
        # the server closes it (WSGI close(), also after a HEAD or a caller who left).
        add_trace_headers(response, ctx.server_span, (ctx.trace_id, ctx.span_id))
        if in_progress is not None and stream is not None:
            on_close(in_progress.dec)
        on_close(lambda: record_request(rt, ctx, req, response))
        on_close(end_server_span_later(req.environ))
        return response
    record_request(rt, ctx, req, response)
    return response


def when_closed(
    response: Response, stream: RunnerStream | None, zone: str
) -> Callable[[Callable[[], object]], None] | None:
    """How to run something when a streamed answer ends: a script's stream (its runner's,
    which the server reads directly) or a platform view's (a run's events, closed
    through werkzeug; a file, passed straight to the server, never reaches werkzeug's
    close). None for an answer sent whole."""
    if stream is not None:
        return lambda callback: stream.on_close(lambda _: callback())
    if response.is_streamed and not response.direct_passthrough and zone == PLATFORM_ZONE:
        return response.call_on_close
    return None


def respond(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    if rt.platform_only and ctx.zone != PLATFORM_ZONE:  # the platform plane runs no script
        raise NotFound()
    keyring = rt.callers.keyring()
    view = platform_view(req.path) if ctx.zone == PLATFORM_ZONE else None
    guard = view.guard if view is not None else Guard.OPEN  # an unknown view: 404 below
    ctx.caller = authorize(ctx.zone, ctx.client_ip, req.headers, rt.settings, keyring, guard)
    rt.callers.admit(ctx.caller)
    if ctx.zone == PLATFORM_ZONE:
        if view is None:
            raise NotFound()
        ctx.script = view.name
        check_view(ctx.caller, view.name, view.guard, req.method)
        check_method(req.method, view.methods)
        return view.func(rt, ctx, req)
    target = parse_target(req.path)
    check_call(ctx.caller, ctx.zone, target.rel_path, req.method)
    script = lookup(rt, ctx, target)
    check_method(req.method, script.methods)
    check_body(req, rt.settings.max_body_bytes)
    if wants_job(req, script):  # `Prefer: respond-async` or ASYNC = True: 202, runs later
        if script.params is not None:  # a bad parameter: 400, nothing queued
            call_handler(rt, ctx, script, req, rt.settings.script_timeout, check=True)
        return start_job(rt, ctx, req, script)
    hand_over(ctx.caller, req.environ)
    return run(rt, ctx, req, script)


def lookup(rt: Runtime, ctx: RequestContext, target: Target) -> LoadedScript:
    """The script for this target, described by a runner (under the import deadline) if
    it changed since this worker last asked."""
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
    start_series(rt, ctx, script)
    return script


def start_series(rt: Runtime, ctx: RequestContext, script: LoadedScript) -> None:
    """A script this worker now serves: its error series start at 0 (so increase() sees
    its first failure) and its CONCURRENCY is shown, however this worker learnt of it
    (its own import, its scanner's, another process's shared description)."""
    if rt.metrics is None:
        return
    for kind in ERROR_KINDS:
        rt.metrics.script_errors.labels(ctx.zone, ctx.script, kind)
    if script.concurrency:
        rt.metrics.concurrency_limit.labels(ctx.zone, ctx.script).set(script.concurrency)
        rt.metrics.rejected.labels(ctx.zone, ctx.script, "concurrency")
        rt.metrics.script_in_progress.labels(ctx.zone, ctx.script)  # at 0 in this worker


def import_script(rt: Runtime, ctx: RequestContext, path: str) -> LoadedScript:
    lines = ScriptLines(rt.log, ctx, rt.settings.script_output_limit)
    with rt.tracer.start_as_current_span("script.import") as span:
        span.set_attribute("code.filepath", path)
        try:
            script, runner = rt.scripts.load(path, rt.runners, CallHooks(rt, ctx, lines))
        except ScriptLoadError as exc:
            record_failure(rt, ctx, span, "import", exc)
            raise ScriptFailed() from exc
        except ScriptTimeout as exc:
            record_failure(rt, ctx, span, "timeout", exc)
            raise ScriptTimedOut() from None
        except BackedOff as exc:
            raise Unavailable(
                "backed_off", headers={"Retry-After": str(math.ceil(exc.retry_after))}
            ) from exc
        except RunnerFailed as exc:
            record_failure(rt, ctx, span, "crashed", exc)
            raise ScriptFailed("runner_died") from exc
        finally:
            lines.close()
    rt.runners.put_back(runner)  # warm, for the call that asked
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


def run(rt: Runtime, ctx: RequestContext, req: Request, script: LoadedScript) -> Response:
    """Take a slot of the script's bulkhead, then call it in a runner under its deadline."""
    releases: list[Callable[[], None]] = []
    if script.concurrency:
        release = rt.bulkhead.take(f"{ctx.zone}:{ctx.script}", script.concurrency)
        if release is None:
            raise TooManyRequests("concurrency")
        releases.append(release)
    if rt.metrics is not None:
        releases.append(rt.metrics.script_started(ctx.zone, ctx.script))
    response = None
    try:
        response = call_handler(rt, ctx, script, req, script.timeout)
        return response
    finally:
        stream = streamed(response) if response is not None else None
        if stream is not None:  # the slot is held until the stream ends
            stream.on_close(lambda _: [release() for release in releases])
        else:
            for release in releases:
                release()
