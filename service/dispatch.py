"""The script view: authorize, resolve, import if changed, run under a deadline, convert.

Checks run in the contract's order (IP allowlist in observe.begin_request, then the
zone's key, then lookup), so without the right key an unknown script looks exactly
like a known one.
"""

from __future__ import annotations

import io
import os
from typing import Any

from flask import Request, Response, current_app, request
from opentelemetry.trace import Status, StatusCode
from werkzeug.exceptions import RequestEntityTooLarge

from service import observe
from service.access import check_zone
from service.convert import to_response
from service.errors import MethodNotAllowed, ScriptFailed, ScriptTimedOut, error_response
from service.loader import LoadedScript, ScriptLoadError
from service.logs import format_failure
from service.observe import RequestState
from service.resolve import PLATFORM_ZONE, ScriptNotFound, Target, locate, parse_target
from service.runtime import Runtime, runtime
from service.timeouts import ScriptTimeout, run_with_deadline

ERROR_KINDS = ("exception", "import", "timeout")
WORKER_RECYCLED = 1  # any code but gunicorn's 3 and 4, which would halt the whole server
PLATFORM_PATHS = frozenset({"/_platform/health", "/_platform/routes", "/_platform/metrics"})


def serve_script(url_path: str = "") -> Response:
    rt = runtime()
    req = request._get_current_object()  # type: ignore[attr-defined]
    st = observe.state()
    if st.zone == PLATFORM_ZONE:
        if req.path in PLATFORM_PATHS:  # a platform endpoint asked with another method
            raise MethodNotAllowed(frozenset({"GET", "HEAD"}))
        raise ScriptNotFound(url_path)
    check_zone(st.zone, st.client_ip, req.headers, rt.settings)
    target = parse_target(req.path)
    script = rt.scripts.cached_target(target) or _resolve_and_load(rt, st, target)
    st.script = target.rel_path
    st.server_span.set_attribute("scriptgate.script", target.rel_path)
    if req.method not in script.methods:
        raise MethodNotAllowed(script.methods)
    if body_too_large(req, rt.settings.max_body_bytes):
        raise RequestEntityTooLarge()
    return _run(rt, st, req, script)


def body_too_large(req: Request, limit: int) -> bool:
    """True when the body is over the limit, checked before the script can read it.

    A chunked body has no Content-Length; werkzeug would silently cut it at the limit
    and let the script run on a truncated body, so it is read here (up to limit + 1).
    """
    if req.content_length is not None:
        return req.content_length > limit
    if "chunked" not in req.headers.get("Transfer-Encoding", "").lower():
        return False
    data = req.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        return True
    req.environ["wsgi.input"] = io.BytesIO(data)
    req.environ["CONTENT_LENGTH"] = str(len(data))
    req.environ.pop("HTTP_TRANSFER_ENCODING", None)
    return False


def _resolve_and_load(rt: Runtime, st: RequestState, target: Target) -> LoadedScript:
    real_path = locate(rt.settings.scripts_dir, target)
    st.script = target.rel_path
    script = rt.scripts.cached(real_path) or _import(rt, st, real_path)
    rt.scripts.remember(target, script)
    return script


def _import(rt: Runtime, st: RequestState, path: str) -> LoadedScript:
    with rt.tracer.start_as_current_span("script.import") as span:
        span.set_attribute("code.filepath", path)
        try:
            script = run_with_deadline(lambda: rt.scripts.load(path), rt.settings.script_timeout)
        except ScriptLoadError as exc:
            _failed(rt, st, span, "import", exc)
            raise ScriptFailed("import") from exc
        except ScriptTimeout as exc:
            _failed(rt, st, span, "timeout", exc)
            raise ScriptTimedOut() from None
    if rt.metrics is not None:
        # Error series start at 0, so increase() sees a script's first failure too.
        for kind in ERROR_KINDS:
            rt.metrics.script_errors.labels(st.zone, st.script, kind)
    return script


def _run(rt: Runtime, st: RequestState, req: Request, script: LoadedScript) -> Response:
    with rt.tracer.start_as_current_span(
        "script.run", record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            return run_with_deadline(
                lambda: to_response(script.handler(req)),
                script.timeout,
                last_resort=lambda: _abandon_worker(rt, st, span),
            )
        except ScriptTimeout as exc:
            _failed(rt, st, span, "timeout", exc)
            raise ScriptTimedOut() from None
        except BaseException as exc:  # a script's own BaseException too: it is the script's fault
            _failed(rt, st, span, "exception", exc)
            raise ScriptFailed("exception") from exc


def _abandon_worker(rt: Runtime, st: RequestState, span: Any) -> None:
    """The script swallowed every ScriptTimeout: answer 504 ourselves, then exit the worker.

    Only under gunicorn, which hands us the client socket and replaces the worker; a
    Python thread cannot be stopped any other way. Counters live in the metrics files,
    so nothing counted so far is lost.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return
    _failed(rt, st, span, "timeout", ScriptTimeout("script ignored its deadline; worker recycled"))
    response = observe.finish_request(error_response(504))
    observe.end_request(None)
    span.end()
    head = [f"HTTP/1.1 {response.status}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    head += ["Connection: close", "", ""]
    try:
        sock.sendall("\r\n".join(head).encode("latin-1") + response.get_data())
    finally:
        provider = current_app.extensions.get("scriptgate_tracer_provider")
        if provider is not None:
            provider.force_flush(2000)
        os._exit(WORKER_RECYCLED)


def _failed(rt: Runtime, st: RequestState, span: Any, kind: str, exc: BaseException) -> None:
    """Record a script failure on both spans, in the error counter and in an ERROR log."""
    stack = None
    for s in (span, st.server_span):
        if s is not None and s.is_recording():
            # The SDK's record_exception would format the whole stack, unbounded.
            stack = stack or format_failure(exc)
            s.add_event(
                "exception",
                {
                    "exception.type": type(exc).__name__,
                    "exception.message": str(exc)[:1000],
                    "exception.stacktrace": stack,
                },
            )
            s.set_status(Status(StatusCode.ERROR, f"script {kind}"))
    if rt.metrics is not None:
        rt.metrics.script_errors.labels(st.zone, st.script, kind).inc()
    context = span.get_span_context()
    rt.log.error(
        f"script {kind}",
        exc_info=exc,
        extra={
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "zone": st.zone,
            "script": st.script,
            "kind": kind,
        },
    )
