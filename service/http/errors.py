"""The one family of errors a request can end in, and the one function that renders them.

Statuses, texts and reasons are declared once, in service/refusals.py; a reason an error
is raised with must be declared there.

Every error a client sees is built by `render_error`, so each carries the trace id and
none carries a stack trace, a file path or a secret. Stages raise; the pipeline renders.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Response, current_app

from service.refusals import BY_REASON
from service.scripts.problems import BadParameters, ScriptProblem


class RequestError(Exception):
    """An answer other than the script's own: status, `error` text and optional reason."""

    status = 500
    error = "internal error"

    def __init__(
        self,
        reason: str | None = None,
        *,
        error: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason or error or self.error)
        self.reason = reason
        if error is not None:
            self.error = error
        self.headers = dict(headers or {})
        self.details: dict[str, Any] = {}  # more fields of the body, before trace_id


class NotFound(RequestError):
    """Unknown, private or escaping path; the answer never says which, or what path."""

    status, error = 404, "not found"


class AccessDenied(RequestError):
    """Refused before any script is looked up; `reason` is the contract's reason code,
    its status as refusals.REFUSALS declares it (401 or 403).

    A 401 names the header the key goes in (`WWW-Authenticate` and the body's `header`),
    so a first curl without it says what to add.
    """

    def __init__(self, reason: str, key_header: str | None = None) -> None:
        super().__init__(reason)
        declared = BY_REASON[reason]
        self.status, self.error = declared.status, declared.error
        if self.status == 401 and key_header:
            self.headers["WWW-Authenticate"] = f'ApiKey header="{key_header}"'
            self.details["header"] = key_header


class MethodNotAllowed(RequestError):
    status, error = 405, "method not allowed"

    def __init__(self, allowed: frozenset[str]) -> None:
        super().__init__(headers={"Allow": ", ".join(sorted(allowed))})


class InvalidParameters(RequestError):
    """Query or body parameters that do not fit the script's declaration (params.py).

    The body lists every field at fault: `{"in", "name", "message", "type"}`.
    """

    status, error = 400, "invalid parameters"

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__()
        self.details["fields"] = fields


class PayloadTooLarge(RequestError):
    status, error = 413, "payload too large"


class TooManyRequests(RequestError):
    """Over a limit: answered at once, never queued."""

    status, error = 429, "too many requests"

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason, headers={"Retry-After": str(retry_after)})
        assert BY_REASON[reason].status == self.status, reason


class Unavailable(RequestError):
    """A store the platform needs to decide (the rate limit store) did not answer:
    refused rather than let an unlimited call through (fail closed)."""

    status, error = 503, "service unavailable"

    def __init__(self, reason: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason, headers=headers)
        assert BY_REASON[reason].status == self.status, reason


class ScriptFailed(RequestError):
    """A script raised, failed to import or had no handler (logged with its stack)."""

    status, error = 500, "internal error"

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason)
        assert reason is None or BY_REASON[reason].status == self.status, reason


class ScriptTimedOut(RequestError):
    status, error = 504, "timeout"


class CallerError(RequestError):
    """A werkzeug HTTPException a script raised (`abort(400, ...)`, bad JSON): the
    caller's error, answered with its own status and description."""

    def __init__(self, status: int, description: str, headers: Mapping[str, str]) -> None:
        super().__init__(error=description, headers=headers)
        self.status = status


class JobNotFound(RequestError):
    """An unknown, malformed, expired job id, or one another caller started: the same
    answer for all, so an id cannot be probed."""

    status, error = 404, "job not found"


class JobConflict(RequestError):
    """The job is not in a state that allows this (its result before it finished,
    cancelling a finished one); `reason` is the job's state."""

    status = 409


class IdempotencyConflict(RequestError):
    """An Idempotency-Key this caller already used for a different request."""

    status, error = 422, "Idempotency-Key already used for a different request"

    def __init__(self, job_id: str) -> None:
        super().__init__("idempotency_key")
        self.details["job_id"] = job_id


class BadHeader(RequestError):
    """A request header that cannot be used as sent; `header` names it."""

    status = 400

    def __init__(self, header: str, error: str) -> None:
        super().__init__(error=error)
        self.details["header"] = header


class QueueUnavailable(RequestError):
    """The job store (SQLite file or Redis) could not be reached: nothing was queued."""

    status, error = 503, "job queue unavailable"


def render_error(exc: RequestError, trace_id: str) -> Response:
    """The contract's JSON error body: `error`, `reason` when there is one, the error's
    own details (a 400's `fields`), `trace_id`."""
    body: dict[str, Any] = {"error": exc.error}
    if exc.reason is not None:
        body["reason"] = exc.reason
    body.update(exc.details)
    body["trace_id"] = trace_id
    response = current_app.json.response(body)
    response.status_code = exc.status
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def refusal_of(exc: RequestError | ScriptProblem) -> RequestError:
    """A script problem (scripts.problems, raised where scripts are found and checked,
    which knows no HTTP) as its answer: 400 with the fields, or a plain 404."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, BadParameters):
        return InvalidParameters(exc.fields)
    return NotFound()


@contextlib.contextmanager
def script_refusals() -> Iterator[None]:
    """Within: a script problem is raised as its answer (refusal_of)."""
    try:
        yield
    except ScriptProblem as exc:
        raise refusal_of(exc) from exc
