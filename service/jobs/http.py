"""Jobs over HTTP: the hand-off from the pipeline (202) and /_platform/jobs/<id>.

A call becomes a job after the same access checks and script lookup as any call, so an
unknown script is still 404 and a bad key 401 before anything is queued. The job is
visible only to a caller who presents the key that started it (its hash is stored, never
the key); to anyone else, as to a wrong or expired id, it does not exist (404).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from service.access import ZONE_KEY_HEADERS, authorize, check_scope
from service.errors import AccessDenied, JobConflict, JobNotFound, QueueUnavailable, RequestError
from service.jobs.snapshot import snapshot
from service.jobs.store import CANCELLED, FINISHED, QUEUED, RUNNING, Job
from service.resolve import PLATFORM_PREFIX, url_for_script

if TYPE_CHECKING:
    from service.loader import LoadedScript
    from service.record import RequestContext
    from service.runtime import Runtime

JOBS_PREFIX = f"{PLATFORM_PREFIX}/jobs/"
RESULT_SUFFIX = "/result"
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


def caller_identity(zone: str, headers: Any) -> str:
    """Who calls, as far as the platform can tell: the zone key presented, named or not
    ("" in the root zone and in a zone opened with *_AUTH=off, where anyone who has the
    job's id may follow it: ids are 192 random bits)."""
    header = ZONE_KEY_HEADERS.get(zone)
    values = headers.getlist(header[0]) if header else []
    return values[0] if len(values) == 1 else ""


def owner_token(job_id: str, identity: str) -> str:
    """What a job stores of its caller: keyed by the job id, so two jobs of one key
    share nothing a reader of the store could match."""
    secret = identity.encode("utf-8", "surrogateescape")
    return hmac.new(job_id.encode(), secret, hashlib.sha256).hexdigest()


def same_caller(job: Job, headers: Any) -> bool:
    """The one check of who may see a job (constant time)."""
    token = owner_token(job.id, caller_identity(job.zone, headers))
    return hmac.compare_digest(job.owner, token)


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


def start_job(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """Queue the call and answer 202 with where to follow it."""
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
            owner=owner_token(job_id, caller_identity(ctx.zone, req.headers)),
            trace_id=ctx.trace_id,
            traceparent=carrier.get("traceparent", ""),
            created_at=time.time(),
        )
        with store_errors(rt):
            rt.jobs.submit(job, snapshot(req))
    if rt.jobs.metrics is not None:
        rt.jobs.metrics.entered(ctx.zone, ctx.script, QUEUED)
    rt.log.info("job queued", extra=log_fields(job))
    response = jsonify(describe(job))
    response.status_code = 202
    response.headers["Location"] = JOBS_PREFIX + job_id
    if prefers_async(req.environ.get("HTTP_PREFER", "")):
        response.headers["Preference-Applied"] = "respond-async"
    return response


def job_status(rt: Runtime, req: Request) -> Response:
    """GET: the job's state; DELETE: cancel it."""
    job = visible_job(rt, req, req.path[len(JOBS_PREFIX) :])
    if req.method == "DELETE":
        return cancel(rt, job)
    return jsonify(describe(job))


def job_result(rt: Runtime, req: Request) -> Response:
    """The response the synchronous call would have given, once the job finished."""
    job = visible_job(rt, req, req.path[len(JOBS_PREFIX) : -len(RESULT_SUFFIX)])
    if job.state not in FINISHED:
        raise JobConflict(job.state, error="job not finished")
    with store_errors(rt):
        result = rt.jobs.store.result(job.id)
    if result is None:  # cancelled, or lost with its worker
        raise JobConflict(job.state, error="job has no result")
    return Response(result.body, status=result.status, headers=list(result.headers))


def visible_job(rt: Runtime, req: Request, job_id: str) -> Job:
    """The job if this caller may see it; JobNotFound for every other case alike."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound()
    with store_errors(rt):
        job = rt.jobs.store.get(job_id, time.time())
    if job is None:
        raise JobNotFound()
    try:  # the checks as they stand now: a revoked or narrowed key no longer sees its jobs
        keyring = rt.callers.keyring()
        url = url_for_script(job.zone, job.script)
        caller = authorize(job.zone, url, req.remote_addr or "", req.headers, rt.settings, keyring)
        check_scope(caller, job.zone, job.script, job.method)
        if caller.key is not None and caller.key.expired():
            raise AccessDenied("expired")
    except AccessDenied:
        raise JobNotFound() from None
    if not same_caller(job, req.headers):
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
        "trace_id": job.trace_id,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "expires_at": iso_time(job.expires_at),
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
    if moment is None:
        return None
    text = datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def log_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "trace_id": job.trace_id, "zone": job.zone, "script": job.script}
