"""A scheduled time's job: created once, whoever creates it.

The scheduler that holds a claim creates the job, and so may a scheduler that took the
claim over after its lease (store.py): the first holder may have been slow, not dead,
and create it too. Both send the job store the idempotency key of the scheduled time
(store.run_key), and the store keeps one job per key (JobStore.create returns the job
already holding it), so the second creation gets the first's job back and queues
nothing. A recoverer first looks for that job (made_job): a holder killed after
creating it started that time, whatever the rules would say by now.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from service.jobs.store import QUEUED, RUNNING, SCHEDULE, Job, JobQuery
from service.observability.logs import redact_query
from service.observability.tracing import span_ids
from service.schedules.discovery import Scheduled
from service.schedules.store import run_key

if TYPE_CHECKING:
    from service.runtime import Runtime

CALLER = "schedule"  # the `caller` of a scheduled job: no key started it
# A time's job is among its script's latest scheduled jobs: only later times' come first.
LOOK_BACK = 20


def start_job(rt: Runtime, found: Scheduled, cron: str, due: float) -> tuple[str, bool]:
    """Queue the job of scheduled time `due`: (its id, True), or (the id of the job a
    scheduler created for that time already, False)."""
    spec = found.spec
    assert spec is not None
    job_id = secrets.token_urlsafe(24)
    with rt.tracer.start_as_current_span(f"schedule {found.url}", kind=SpanKind.PRODUCER) as span:
        span.set_attributes({"scriptgate.job_id": job_id, "scriptgate.schedule": cron})
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        job = Job(
            id=job_id,
            state=QUEUED,
            zone=found.zone,
            script=found.script,
            method=spec.method,
            path=found.url,
            owner="",
            trace_id=span_ids(span)[0],
            traceparent=carrier.get("traceparent", ""),
            created_at=time.time(),
            caller=CALLER,
            trigger=SCHEDULE,
            attempts=1 + found.retries,
            query=json.dumps(redact_query(parse_qs(spec.query, keep_blank_values=True))),
            idempotency_key=run_key(found.zone, found.script, cron, due),
        )
        held = rt.jobs.submit(job, spec.snapshot(found.url))
        if held is not None:
            span.set_attribute("scriptgate.job_id", held.id)
            return held.id, False
    if rt.jobs.metrics is not None:
        rt.jobs.metrics.entered(found.zone, found.script, QUEUED)
    return job_id, True


def made_job(rt: Runtime, found: Scheduled, cron: str, due: float) -> str | None:
    """The job a scheduler already created for scheduled time `due`, if one did: it was
    killed after creating it, before recording it. That run is under way whatever the
    rules would say now (paused since, later than the catch-up window)."""
    key = run_key(found.zone, found.script, cron, due)
    query = JobQuery(
        LOOK_BACK, caller=CALLER, zone=found.zone, script=found.script, trigger=SCHEDULE
    )
    jobs = rt.jobs.store.list_jobs(query, time.time()).jobs
    return next((job.id for job in jobs if job.idempotency_key == key), None)


def still_on(rt: Runtime, job_id: str) -> bool:
    """Is the job still queued or running (the overlap rule)?"""
    last = rt.jobs.store.get(job_id, time.time())
    return last is not None and last.state in (QUEUED, RUNNING)


def iso(moment: float) -> str:
    from service.jobs.http import iso_time

    return iso_time(moment) or ""


def log_fields(zone: str, script: str, cron: str, tz: str) -> dict[str, Any]:
    return {"zone": zone, "script": script, "schedule": cron, "timezone": tz, "caller": CALLER}
