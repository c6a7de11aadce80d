"""The script view: authorize, resolve, import if changed, run under a deadline, convert.

Checks run in the contract's order (IP allowlist in observe.begin_request, then the
zone's key, then lookup), so without the right key an unknown script looks exactly
like a known one.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Response, current_app, g, request
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from werkzeug.exceptions import RequestEntityTooLarge

from service import observe
from service.access import check_zone
from service.convert import to_response
from service.errors import MethodNotAllowed, ScriptFailed, ScriptTimedOut, error_response
from service.loader import LoadedScript, ScriptLoadError
from service.resolve import PLATFORM_ZONE, ScriptNotFound, locate, parse_target
from service.runtime import Runtime, runtime
from service.timeouts import ScriptTimeout, run_with_deadline

ERROR_KINDS = ("exception", "import", "timeout")
WORKER_RECYCLED = 1  # any code but gunicorn's 3 and 4, which would halt the whole server
PLATFORM_PATHS = frozenset({"/_platform/health", "/_platform/routes", "/_platform/metrics"})


def serve_script(url_path: str = "") -> Response:
    rt = runtime()
    zone = g.zone
    if zone == PLATFORM_ZONE:
        if request.path in PLATFORM_PATHS:  # a platform endpoint asked with another method
            raise MethodNotAllowed(frozenset({"GET", "HEAD"}))
        raise ScriptNotFound(url_path)
    check_zone(zone, g.client_ip, request.headers, rt.settings)
    target = parse_target(request.path)
    real_path = locate(rt.settings.scripts_dir, target)
    g.script = target.rel_path
    trace.get_current_span().set_attribute("scriptgate.script", target.rel_path)

    script = rt.scripts.cached(real_path) or _import(rt, real_path)
    if request.method not in script.methods:
        raise MethodNotAllowed(script.methods)
    if (request.content_length or 0) > rt.settings.max_body_bytes:
        raise RequestEntityTooLarge()
    return _run(rt, script)


def _import(rt: Runtime, path: str) -> LoadedScript:
    with rt.tracer.start_as_current_span("script.import") as span:
        span.set_attribute("code.filepath", path)
        try:
            script = run_with_deadline(lambda: rt.scripts.load(path), rt.settings.script_timeout)
        except ScriptLoadError as exc:
            _failed(rt, span, "import", exc)
            raise ScriptFailed("import") from exc
        except ScriptTimeout as exc:
            _failed(rt, span, "timeout", exc)
            raise ScriptTimedOut() from None
    if rt.metrics is not None:
        # Error series start at 0, so increase() sees a script's first failure too.
        for kind in ERROR_KINDS:
            rt.metrics.script_errors.labels(g.zone, g.script, kind)
    return script


def _run(rt: Runtime, script: LoadedScript) -> Response:
    with rt.tracer.start_as_current_span("script.run") as span:
        try:
            return run_with_deadline(
                lambda: to_response(script.handler(request)),
                script.timeout,
                last_resort=lambda: _abandon_worker(rt, span),
            )
        except ScriptTimeout as exc:
            _failed(rt, span, "timeout", exc)
            raise ScriptTimedOut() from None
        except (Exception, SystemExit) as exc:
            _failed(rt, span, "exception", exc)
            raise ScriptFailed("exception") from exc


def _abandon_worker(rt: Runtime, span: Any) -> None:
    """The script swallowed every ScriptTimeout: answer 504 ourselves, then exit the worker.

    Only under gunicorn, which hands us the client socket and replaces the worker; a
    Python thread cannot be stopped any other way. Counters live in the metrics files,
    so nothing counted so far is lost.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return
    _failed(rt, span, "timeout", ScriptTimeout("script ignored its deadline; worker recycled"))
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


def _failed(rt: Runtime, span: Any, kind: str, exc: BaseException) -> None:
    """Record a script failure on both spans, in the error counter and in an ERROR log."""
    server_span = getattr(g, "server_span", None)
    for s in (span, server_span):
        if s is not None and s.is_recording():
            s.record_exception(exc)
            s.set_status(Status(StatusCode.ERROR, f"script {kind}"))
    if rt.metrics is not None:
        rt.metrics.script_errors.labels(g.zone, g.script, kind).inc()
    context = span.get_span_context()
    rt.log.error(
        f"script {kind}",
        exc_info=exc,
        extra={
            "trace_id": format(context.trace_id, "032x"),
            "span_id": format(context.span_id, "016x"),
            "zone": g.zone,
            "script": g.script,
            "kind": kind,
        },
    )
