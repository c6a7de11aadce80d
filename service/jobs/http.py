"""Jobs over HTTP: the hand-off from the pipeline (202), /_platform/jobs/<id> (its state,
result and cancel). The run history is history.py; logs and events, follow.py.

A call becomes a job after the same access checks and script lookup as any call, so an
unknown script is still 404 and a bad key 401 before anything is queued. The job records
the id of the key that started it (never the key). Who may see a job is decided in one
place, `access.policy.allowed` (SEE_RUN), from the caller the pipeline identified: the
key that started it, or a key with the `platform:jobs` scope. To anyone else, as to a wrong
or expired id, a job does not exist (404).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from service.access.keys import ANONYMOUS_ID, Caller
from service.access.policy import SEE_RUN, allowed
from service.http.errors import (
    BadHeader,
    IdempotencyConflict,
    JobConflict,
    JobNotFound,
    QueueUnavailable,
    RequestError,
)
from service.jobs.snapshot import snapshot
from service.jobs.store import (
    CALL,
    CANCELLED,
    FINISHED,
    QUEUED,
    RUNNING,
    Job,
)
from service.observability.logs import redact_query
from service.scripts.resolve import PLATFORM_PREFIX, url_for_script
from service.small import iso_z

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime
    from service.scripts.loader import LoadedScript

JOBS_PATH = f"{PLATFORM_PREFIX}/jobs"
JOBS_PREFIX = JOBS_PATH + "/"
RESULT_SUFFIX = "/result"
LOGS_SUFFIX = "/logs"
EVENTS_SUFFIX = "/events"
JOB_ID = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24): 192 random bits


def prefers_async(prefer: str) -> bool:
    """RFC 7240 `Prefer: respond-async`, alone or among other preferences (the WSGI
    server joins several Prefer headers with commas)."""
    for preference in prefer.split(","):
        name = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
        if name == "respond-async":
            return True
    return False


def wants_job(req: Request, script: LoadedScript) -> bool:
    """Run this call as a job? HEAD never is: it asks for headers now. (On every call:
    the environ is read directly, werkzeug's header lookup scans all of it.)"""
    if req.method == "HEAD":
        return False
    prefer = req.environ.get("HTTP_PREFER")
    return script.run_async or (prefer is not None and prefers_async(prefer))


def may_see(rt: Runtime, viewer: Caller, client: str, job: Job) -> bool:
    """policy.allowed's SEE_RUN, for every job endpoint."""
    return allowed(viewer, SEE_RUN, job, settings=rt.settings, client=client)


@contextlib.contextmanager
def store_errors(rt: Runtime) -> Iterator[None]:
    """A store that cannot be reached is a 503 for this call, never a 500."""
    try:
        yield
    except RequestError:
        raise
    except Exception as exc:
        rt.log.error("job store error", exc_info=exc)
        raise QueueUnavailable() from None


IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


def idempotency(req: Request, caller: Caller) -> tuple[str, str] | tuple[None, None]:
    """(hash of the caller's Idempotency-Key, fingerprint of the request), or Nones.

    The fingerprint covers what makes two requests the same: method, path, query and
    body. Only a key's caller may send one: without a key, callers cannot be told apart,
    and one could get another's job by guessing its Idempotency-Key.
    """
    values = req.headers.getlist(IDEMPOTENCY_HEADER)
    if not values:
        return None, None
    if len(values) > 1 or not 1 <= len(values[0]) <= MAX_IDEMPOTENCY_KEY:
        raise BadHeader(IDEMPOTENCY_HEADER, f"send one {IDEMPOTENCY_HEADER} of 1 to 255 characters")
    if caller.key is None:
        raise BadHeader(IDEMPOTENCY_HEADER, f"{IDEMPOTENCY_HEADER} needs an API key")
    key = hashlib.sha256(values[0].encode("utf-8", "surrogateescape")).hexdigest()
    digest = hashlib.sha256()
    for part in (req.method.encode(), req.path.encode(), req.query_string):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(req.get_data(cache=True))
    return key, digest.hexdigest()


def start_job(rt: Runtime, ctx: RequestContext, req: Request, script: LoadedScript) -> Response:
    """Queue the call and answer 202 with where to follow it; with an Idempotency-Key
    this caller sent before, the job it started then (202, or 200 once finished)."""
    key, fingerprint = idempotency(req, ctx.caller)
    job_id = secrets.token_urlsafe(24)
    attributes = {"scriptgate.job_id": job_id}
    with rt.tracer.start_as_current_span("job.enqueue", kind=SpanKind.PRODUCER) as span:
        span.set_attributes(attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the job's span will be a child of this one
        job = Job(
            id=job_id,
            state=QUEUED,
            zone=ctx.zone,
            script=ctx.script,
            method=req.method,
            path=req.path,
            owner=ctx.caller.key.owner if ctx.caller.key is not None else "",
            trace_id=ctx.trace_id,
            traceparent=carrier.get("traceparent", ""),
            created_at=time.time(),
            caller=ctx.caller.id,
            trigger=CALL,
            attempts=1 + script.retries,
            query=json.dumps(redact_query(req.args.to_dict(flat=False))),
            idempotency_key=key,
            fingerprint=fingerprint,
        )
        with store_errors(rt):
            held = rt.jobs.submit(job, snapshot(req))
    if held is not None:
        if held.fingerprint != fingerprint:
            raise IdempotencyConflict(held.id)
        rt.log.info("job replayed", extra=log_fields(held))
        return job_answer(held, req, 200 if held.state in FINISHED else 202)
    if rt.jobs.metrics is not None:
        rt.jobs.metrics.entered(ctx.zone, ctx.script, QUEUED)
    rt.log.info("job queued", extra=log_fields(job))
    return job_answer(job, req, 202)


def job_answer(job: Job, req: Request, status: int) -> Response:
    response = jsonify(describe(job))
    response.status_code = status
    response.headers["Location"] = JOBS_PREFIX + job.id
    if prefers_async(req.environ.get("HTTP_PREFER", "")):
        response.headers["Preference-Applied"] = "respond-async"
    return response


def job_status(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """GET: the job's state; DELETE: cancel it."""
    job = visible_job(rt, ctx, req.path[len(JOBS_PREFIX) :])
    if req.method == "DELETE":
        return cancel(rt, job)
    return jsonify(describe(job))


def job_result(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """The response the synchronous call would have given, once the job finished."""
    job = visible_job(rt, ctx, req.path[len(JOBS_PREFIX) : -len(RESULT_SUFFIX)])
    if job.state not in FINISHED:
        raise JobConflict(job.state, error="job not finished")
    with store_errors(rt):
        result = rt.jobs.store.result(job.id)
    if result is None:  # cancelled, or lost with its worker
        raise JobConflict(job.state, error="job has no result")
    return Response(result.body, status=result.status, headers=list(result.headers))


def visible_job(rt: Runtime, ctx: RequestContext, job_id: str) -> Job:
    """The job if this caller may see it; JobNotFound for every other case alike."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound()
    with store_errors(rt):
        job = rt.jobs.store.get(job_id, time.time())
    if job is None or not may_see(rt, ctx.caller, ctx.client_ip, job):
        raise JobNotFound()
    return job


def cancel(rt: Runtime, job: Job) -> Response:
    """A queued job never runs (200, cancelled); a running one is asked to stop (202:
    its job worker interrupts the script and reports `cancelled`)."""
    if job.state in FINISHED:
        raise JobConflict(job.state, error="job already finished")
    now = time.time()
    with store_errors(rt):
        state = rt.jobs.store.cancel(job.id, now, rt.settings.job_retention)
        job = rt.jobs.store.get(job.id, now) or job
    if state not in (CANCELLED, RUNNING):
        raise JobConflict(state, error="job already finished")
    rt.log.info("job cancel", extra={**log_fields(job), "state": state})
    if state == RUNNING:
        response = jsonify(describe(job))
        response.status_code = 202
        return response
    if rt.jobs.metrics is not None:
        rt.jobs.metrics.entered(job.zone, job.script, CANCELLED)
    return jsonify(describe(job))


def describe(job: Job) -> dict[str, Any]:
    """The job as GET /_platform/jobs/<id> shows it."""
    body: dict[str, Any] = {
        "id": job.id,
        "state": job.state,
        "script": url_for_script(job.zone, job.script),
        "method": job.method,
        "query": json.loads(job.query),
        "caller": job.caller or None,
        "trigger": job.trigger,
        "attempt": job.attempt,
        "attempts": job.attempts,
        "retry_of": job.retry_of,  # the run this one retries
        "retried_as": job.retried_as,  # the run that retries this one
        "progress": json.loads(job.progress) if job.progress else None,
        "trace_id": job.trace_id,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "expires_at": iso_time(job.expires_at),
        "queued_ms": span_ms(job.created_at, job.started_at),
        "duration_ms": span_ms(job.started_at, job.finished_at),
        "status_url": JOBS_PREFIX + job.id,
    }
    if job.cancel_requested and job.state == RUNNING:
        body["cancel_requested"] = True
    if job.error:
        body["error"] = job.error
    if job.result_status is not None:
        body["result"] = {"status": job.result_status, "url": JOBS_PREFIX + job.id + RESULT_SUFFIX}
    return body


def iso_time(moment: float | None) -> str | None:
    return iso_z(moment)


def span_ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round((end - start) * 1000, 3)


def log_fields(job: Job) -> dict[str, Any]:
    """What every log line about a job carries."""
    return {
        "job_id": job.id,
        "trace_id": job.trace_id,
        "zone": job.zone,
        "script": job.script,
        "caller": job.caller or ANONYMOUS_ID,
    }
