"""The request pipeline: every request, platform endpoints included, in one place.

    context   zone, client (already the real one: access/clients.py), server span
    access    API_TRUSTED_IPS, the zone's allowlist, the zone's key or the view's guard
              (access/guard.py); what the caller may do: access/policy.py `allowed`
    caller    the key's expiry and rate limit, its last use             (callers.py)
    lookup    a platform view, or the script: scope, resolve, described by a runner
    checks    method, body size                                          (loader.py)
    job?      `Prefer: respond-async` or ASYNC = True: queue it, 202     (jobs/http.py)
    run       bulkhead slot, then the call in the script's runner        (runners/)
              (its parameters, handler and conversion run there)
    record    trace headers, metrics, the request log line               (record.py)

A stage that refuses raises a `RequestError`; `handle_request` renders it with the one
error function and records it like any other response.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from typing import Any

from flask import Request, Response, request
from opentelemetry import trace

from service.access.callers import SCRIPT_ENVIRON_KEYS, hand_over
from service.access.guard import authorize, check_call, check_view
from service.access.policy import Guard
from service.http.context import RequestContext
from service.http.errors import (
    AccessDenied,
    CallerError,
    InvalidParameters,
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
from service.observability.metrics import ERROR_KINDS
from service.observability.record import record_failure, record_request
from service.observability.scriptlog import ScriptLines
from service.observability.tracing import add_trace_headers, end_server_span_later
from service.platform.views import platform_view
from service.runners.pool import (
    Hooks,
    ImportFailed,
    RunnerFailed,
    RunnerStream,
    ScriptStopped,
    ScriptTimeout,
)
from service.runtime import Runtime, runtime
from service.scripts.loader import BackedOff, LoadedScript, ScriptLoadError
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
    if stream is not None:
        # Its log line, duration and server span are the whole stream's: written when
        # the server closes it (WSGI close(), also after a HEAD or a caller who left).
        add_trace_headers(response, ctx.server_span, (ctx.trace_id, ctx.span_id))
        if in_progress is not None:
            stream.on_close(lambda _: in_progress.dec())
        stream.on_close(lambda _: record_request(rt, ctx, req, response))
        end_span = end_server_span_later(req.environ)
        stream.on_close(lambda _: end_span())
        return response
    record_request(rt, ctx, req, response)
    return response


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
    return script


def import_script(rt: Runtime, ctx: RequestContext, path: str) -> LoadedScript:
    lines = ScriptLines(rt.log, ctx, rt.settings.script_output_limit)
    with rt.tracer.start_as_current_span("script.import") as span:
        span.set_attribute("code.filepath", path)
        try:
            script, runner = rt.scripts.load(path, rt.runners, _CallHooks(rt, ctx, lines))
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


class _CallHooks(Hooks):
    """A call's log lines and `secret()` requests, answered for the runner's own zone;
    a job's lines and progress also go to its `output` (jobs/output.py)."""

    def __init__(
        self, rt: Runtime, ctx: RequestContext, lines: ScriptLines, output: Any = None
    ) -> None:
        self.rt = rt
        self.zone = ctx.zone
        self.lines = lines
        self.output = output

    def log(self, message: dict[str, Any]) -> None:
        self.lines.write(message)
        if self.output is not None:
            self.output.line(message)

    def progress(self, message: dict[str, Any]) -> None:
        if self.output is not None:
            self.output.progress(message.get("fraction"), message.get("message"))

    def secret(self, name: str) -> dict[str, Any]:
        try:
            return {"value": self.rt.secrets.read(name, self.zone)}
        except ValueError as exc:
            return {"error": str(exc), "invalid": True}
        except LookupError as exc:
            return {"error": str(exc)}


def call_handler(
    rt: Runtime,
    ctx: RequestContext,
    script: LoadedScript,
    req: Request,
    seconds: float,
    stop: Callable[[], bool] | None = None,
    *,
    check: bool = False,
    log_fields: dict[str, Any] | None = None,
    output: Any = None,
) -> Response:
    """The script's handler in one of its runners under its deadline, in a `script.run`
    span; with `check`, only its declared parameters are checked.

    Its failures become the contract's answers: 504 at the deadline, its own 4xx, 500
    for anything it raised. Jobs call this too, with `stop` (a cancel request), which
    ends in ScriptStopped for the job worker to report.
    """
    # A request whose span is sampled out would get a child span sampled out too: none is
    # made, and the script's log lines carry the server span's id.
    child = (
        rt.tracer.start_as_current_span(
            "script.run",
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=False,  # a stream's span ends with the stream
        )
        if ctx.server_span.is_recording() and not check
        else contextlib.nullcontext()
    )
    lines = ScriptLines(rt.log, ctx, rt.settings.script_output_limit, log_fields)
    stream: RunnerStream | None = None
    with child as span:
        try:
            try:
                hooks = _CallHooks(rt, ctx, lines, output)
                runner = rt.runners.take(script.key)
                if runner is None:
                    runner = rt.scripts.start_runner(script, rt.runners, hooks)
                message = {
                    "environ": runner_environ(req.environ),
                    "check": check,
                    "budget": rt.settings.script_output_limit,
                }
                answer, body = rt.runners.call(
                    runner, message, req.get_data(), seconds, stop, hooks
                )
            except ScriptStopped:
                raise
            except ScriptTimeout as exc:
                record_failure(rt, ctx, span, "timeout", exc)
                raise ScriptTimedOut() from None
            except RunnerFailed as exc:
                record_failure(rt, ctx, span, exc.kind, exc)
                raise ScriptFailed("runner_died") from exc
            except (ScriptLoadError, ImportFailed) as exc:
                record_failure(rt, ctx, span, "import", exc)
                raise ScriptFailed() from exc
            if isinstance(body, RunnerStream):
                stream = body
                stream.on_close(lambda ended: _stream_ended(rt, ctx, span, lines, ended))
                response = Response(status=answer["status"], headers=answer["headers"])
                response.response = stream
                response.direct_passthrough = True  # chunks as the runner sends them
                return response
            return answer_of(rt, ctx, span, answer, body)
        finally:
            if stream is None:
                lines.close()
                if span is not None:
                    span.end()


def _stream_ended(
    rt: Runtime, ctx: RequestContext, span: Any, lines: ScriptLines, stream: RunnerStream
) -> None:
    """A streamed answer's end: its failure (a timeout cuts the stream) on the span, in
    the error counter and the log, as a call's would be; then the span ends."""
    lines.close()
    failure = stream.failure
    if isinstance(failure, ScriptTimeout):
        record_failure(rt, ctx, span, "timeout", failure)
    elif isinstance(failure, RunnerFailed):
        record_failure(rt, ctx, span, failure.kind, failure)
    if span is not None:
        span.set_attribute("scriptgate.stream_bytes", stream.sent)
        if stream.cut_short:
            span.set_attribute("scriptgate.stream_cut_short", True)
        span.end()


def streamed(response: Response) -> RunnerStream | None:
    """The runner stream a script's response is, when it is one."""
    body = response.response
    return body if isinstance(body, RunnerStream) else None


def answer_of(
    rt: Runtime, ctx: RequestContext, span: Any, answer: dict[str, Any], body: bytes
) -> Response:
    """The runner's answer as the contract's response, or the refusal it stands for."""
    kind = answer.get("t")
    if kind == "response":
        response = Response(status=answer["status"], headers=answer["headers"])
        response.response = [body]  # as is: Content-Length stays the script's (HEAD)
        return response
    if kind == "checked":
        return Response(status=204)
    if kind == "invalid":
        raise InvalidParameters(answer["fields"])
    if kind == "caller_error":
        raise CallerError(int(answer["status"]), str(answer["error"]), answer["headers"])
    if kind == "too_large":
        raise PayloadTooLarge()
    failure = RunnerFailed(
        "memory" if answer.get("kind") == "memory" else "exception",
        str(answer.get("message", "")),
        str(answer.get("traceback", "")),
        str(answer.get("type", "Exception")),
    )
    record_failure(rt, ctx, span, failure.kind, failure)
    raise ScriptFailed("memory" if failure.kind == "memory" else None) from failure


_ENVIRON_KEEP = SCRIPT_ENVIRON_KEYS | {"wsgi.url_scheme"}


def runner_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The request's CGI variables and headers for the runner: text only (no server
    objects), the key headers already taken out (callers.hand_over)."""
    return {
        k: v
        for k, v in environ.items()
        if (isinstance(v, str) and "." not in k) or k in _ENVIRON_KEEP
    }
