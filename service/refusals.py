"""Every refusal Scriptgate answers with, declared once.

Each entry says its status, its `error` text, its `reason` (the body's and the metrics'
label), which counter sees it, whether it counts against the key that made the call
(`scriptgate_caller_refusals_total`), and its line in the API document. The HTTP errors
(http/errors.py), the request record and metrics (observability/) and the API document
(platform/openapi.py) all read this table, so none can disagree with another; a test
provokes each script-facing one and compares the answer with the document.
Data only: every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

DENIED, REJECTED = "denied", "rejected"  # scriptgate_auth_denied_total, ..._requests_rejected_total


@dataclass(frozen=True)
class Refusal:
    status: int
    error: str
    reason: str | None  # None: the body has no `reason`
    doc: str  # its line in the API document's answer for `status`
    counter: str | None = None  # DENIED or REJECTED: the metric that counts it by reason
    per_caller: bool = False  # counts against the key (its own scope, expiry or limit)
    scripts: bool = True  # a script's call may get it (the API document lists it there)


REFUSALS = (
    Refusal(
        400,
        "invalid parameters",
        None,
        "A declared parameter is missing or does not fit; `fields` lists each.",
    ),
    Refusal(401, "unauthorized", "api_key", "X-API-Key is missing or wrong.", DENIED),
    Refusal(401, "unauthorized", "admin_key", "X-Admin-Key is missing or wrong.", DENIED),
    Refusal(
        401, "unauthorized", "expired", "The key is past its `expires`.", DENIED, per_caller=True
    ),
    Refusal(403, "forbidden", "ip", "The caller's address is not in the zone's allowlist.", DENIED),
    Refusal(
        403, "forbidden", "zone_disabled", "No key may call this zone (its key is not set).", DENIED
    ),
    Refusal(
        403,
        "forbidden",
        "scope",
        "The key's scopes do not cover this script or method.",
        DENIED,
        per_caller=True,
    ),
    Refusal(404, "not found", None, "No such script (or one outside the zone)."),
    Refusal(
        405,
        "method not allowed",
        None,
        "The script does not answer this method; `Allow` lists those it does.",
    ),
    Refusal(413, "payload too large", None, "The body is over MAX_BODY_BYTES."),
    Refusal(
        422,
        "Idempotency-Key already used for a different request",
        "idempotency_key",
        "This Idempotency-Key started another request's job; `job_id` names it.",
    ),
    Refusal(
        429,
        "too many requests",
        "concurrency",
        "The script's CONCURRENCY is reached; retry after `Retry-After`.",
        REJECTED,
    ),
    Refusal(
        429,
        "too many requests",
        "rate_limit",
        "The key's rate limit is reached; retry after `Retry-After`.",
        REJECTED,
        per_caller=True,
    ),
    Refusal(
        500,
        "internal error",
        None,
        "The script raised or does not load; the log line of its trace id says why.",
    ),
    Refusal(500, "internal error", "memory", "The script went over its MEMORY_LIMIT."),
    Refusal(
        500, "internal error", "runner_died", "The script's runner process died during the call."
    ),
    Refusal(
        503,
        "service unavailable",
        "backed_off",
        "The script's import hung; it is not tried again until `Retry-After`.",
    ),
    Refusal(
        503,
        "service unavailable",
        "rate_limit_store",
        "The rate limit store does not answer (refused rather than unlimited).",
    ),
    Refusal(
        503, "job queue unavailable", None, "The job store does not answer; nothing was queued."
    ),
    Refusal(504, "timeout", None, "The script ran past its TIMEOUT."),
)

BY_REASON = {r.reason: r for r in REFUSALS if r.reason is not None}
CALLER_REFUSALS = tuple(r.reason for r in REFUSALS if r.per_caller and r.reason)


def reasons(counter: str) -> tuple[str, ...]:
    """The reasons a counter is labelled with, for its help text and its series at 0."""
    return tuple(r.reason for r in REFUSALS if r.counter == counter and r.reason)


def status_of(reason: str) -> int:
    return BY_REASON[reason].status


def of_status(status: int) -> tuple[Refusal, ...]:
    return tuple(r for r in REFUSALS if r.status == status)
