"""The one JSON error body, and the Flask handlers that turn exceptions into it.

Every error a client can see is built by `error_response`, so each carries the trace id
and none carries a stack trace, a file path or a secret.
"""

from __future__ import annotations

from flask import Flask, Response, current_app
from werkzeug.exceptions import HTTPException

from service.access import AccessDenied
from service.observe import state
from service.resolve import ScriptNotFound
from service.tracing import current_trace_id

ERROR_MESSAGES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "payload too large",
    500: "internal error",
    504: "timeout",
}


class ScriptFailed(Exception):
    """A script raised, failed to import or had no handler; `kind` is the metric label."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class ScriptTimedOut(Exception):
    """A script ran past its TIMEOUT (answered 504)."""


class MethodNotAllowed(Exception):
    def __init__(self, allowed: frozenset[str]) -> None:
        super().__init__(", ".join(sorted(allowed)))
        self.allowed = allowed


def error_response(status: int, reason: str | None = None, *, error: str | None = None) -> Response:
    """Build the contract's JSON error body for `status`."""
    body: dict[str, str] = {"error": error or ERROR_MESSAGES.get(status, "error")}
    if reason is not None:
        body["reason"] = reason
    body["trace_id"] = current_trace_id()
    response = current_app.json.response(body)
    response.status_code = status
    return response


def _access_denied(exc: AccessDenied) -> Response:
    state().denied_reason = exc.reason
    return error_response(exc.status, exc.reason)


def _method_not_allowed(exc: MethodNotAllowed) -> Response:
    response = error_response(405)
    response.headers["Allow"] = ", ".join(sorted(exc.allowed))
    return response


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = error_response(status, error=ERROR_MESSAGES.get(status) or (exc.name or "").lower())
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # type: ignore[attr-defined]
    return response


def _unexpected(exc: Exception) -> Response:
    current_app.extensions["scriptgate"].log.error("unhandled error", exc_info=exc)
    return error_response(500)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(AccessDenied, _access_denied)
    app.register_error_handler(ScriptNotFound, lambda exc: error_response(404))
    app.register_error_handler(ScriptFailed, lambda exc: error_response(500))
    app.register_error_handler(ScriptTimedOut, lambda exc: error_response(504))
    app.register_error_handler(MethodNotAllowed, _method_not_allowed)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
