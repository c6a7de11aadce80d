"""Run one job in a job worker, as the synchronous call would have run it.

The request is rebuilt from its snapshot; the script is found by the pipeline's own
`lookup` (same ScriptCache: an edited script gets a fresh runner, as for a call) and run
by `call_handler` in one of its runners under the job's timeout, exactly as a call is.
While it runs, this thread asks the store a few times a second whether the job was
cancelled; a cancel or the deadline kills the runner's process group at once.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flask import Flask, request
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.access.callers import (
    ATTEMPT_ENVIRON_KEY,
    CALLER_ENVIRON_KEY,
    JOB_ID_ENVIRON_KEY,
    OWNER_ENVIRON_KEY,
)
from service.access.keys import ANONYMOUS_ID, Caller
from service.http.call import call_handler
from service.http.context import RequestContext
from service.http.errors import (
    CallerError,
    InvalidParameters,
    RequestError,
    ScriptFailed,
    ScriptTimedOut,
    render_error,
    script_refusals,
)
from service.http.pipeline import check_method, lookup
from service.jobs.capture import ResultTooLarge, capture
from service.jobs.http import log_fields
from service.jobs.output import JobOutput
from service.jobs.snapshot import environ
from service.jobs.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RETRY,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    Ending,
    Job,
    Result,
)
from service.jobs.watch import JobLog, Shutdown, Watch
from service.runners.failures import ScriptStopped
from service.scripts.resolve import parse_target, url_for_script

if TYPE_CHECKING:
    from service.runtime import Runtime
    from service.scripts.loader import LoadedScript

FINISH_RETRY_SECONDS = (0.2, 1.0, 3.0)  # a store that refused a job's end, asked again


@dataclass(frozen=True)
class Outcome:
    state: str
    error: str | None = None
    result: Result | None = None
    retry_delay: float | None = None  # the script's RETRY_DELAY when this may be retried


# huey retries a task that raises, after a fixed delay (retry_backoff multiplies it, no
# jitter), by queueing the same task again. Ours never raises: the outcome is the job's
# state in the store, and a re-run of the same id could not be claimed (it finished).
# So a retry here is a new run with a record of its own (trigger "retry", attempt n of
# attempts), queued on huey's schedule for its delay.
MAX_RETRY_DELAY = 3600.0


def retry_delay(first: float, attempt: int) -> float:
    """Before the retry of run `attempt`: `first` doubled each run, with jitter (between
    half and all of it), so runs that failed together do not all come back together."""
    ceiling = min(first * 2 ** (attempt - 1), MAX_RETRY_DELAY)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


class JobExecutor:
    """The body of huey's task in a job worker: one job id at a time."""

    def __init__(self, app: Flask, worker_id: str, shutdown: Shutdown) -> None:
        self.app = app
        self.rt: Runtime = app.extensions["scriptgate"]
        self.worker_id = worker_id
        self.shutdown = shutdown

    def __call__(self, job_id: str) -> None:
        rt = self.rt
        store, metrics = rt.jobs.store, rt.jobs.metrics
        job = store.claim(job_id, self.worker_id, time.time())
        if job is None:  # cancelled while it waited
            return
        started = job.started_at or time.time()
        if metrics is not None:
            metrics.entered(job.zone, job.script, RUNNING)
            metrics.attempts.labels(job.zone, job.script, str(min(job.attempt, 5))).inc()
            metrics.observe_wait(job.zone, job.script, started - job.created_at, job.traceparent)
        snapshot = store.request_of(job.id)  # read before finish() drops it: a retry's
        outcome = self.run(job, snapshot)
        finished = time.time()
        retention = rt.settings.job_retention
        ending = Ending(outcome.state, finished, retention, outcome.error, outcome.result)
        # The retry is queued (and recorded on this run) before this run is finished: a
        # reader who sees it failed also sees which run retries it, never "failed, and
        # no retry" for a moment.
        retry = None
        if outcome.retry_delay is not None and job.attempt < job.attempts and snapshot:
            retry = self.retry(job, snapshot, retry_delay(outcome.retry_delay, job.attempt))
        ending = self.finish(job, ending)
        if ending is None:
            return  # declared lost meanwhile (whoever did so counted it), or unrecorded
        outcome = replace(outcome, state=ending.state, result=ending.result)
        if metrics is not None:
            metrics.entered(job.zone, job.script, outcome.state)
            metrics.observe_run(job.zone, job.script, finished - started, job.traceparent)
            if outcome.state in (FAILED, TIMED_OUT) and retry is None:
                metrics.final_failures.labels(job.zone, job.script).inc()
        rt.log.info(
            "job",
            extra={
                **log_fields(job),
                "attempt": job.attempt,
                "attempts": job.attempts,
                "retried_as": retry,
                "state": outcome.state,
                "status": outcome.result.status if outcome.result else None,
                "queued_ms": round((started - job.created_at) * 1000, 3),
                "duration_ms": round((finished - started) * 1000, 3),
            },
        )

    def finish(self, job: Job, ending: Ending) -> Ending | None:
        """Record how the job ended; the ending recorded, or None if it was not running.

        A store that refuses the write (a full disk, Redis out of memory) is tried again a
        few times; a result it still cannot take is dropped and the job recorded failed
        with why, so it does not stay `running` until the supervisor calls it lost.
        """
        store, log = self.rt.jobs.store, self.rt.log
        for attempt, pause in enumerate((*FINISH_RETRY_SECONDS, None)):
            try:
                return ending if store.finish(job.id, ending) else None
            except Exception as exc:
                log.error("job store did not take the job's end: %s", exc, extra=log_fields(job))
                if ending.result is not None and attempt >= 1:
                    error = f"the result could not be stored: {exc}"[:500]
                    ending = replace(ending, state=FAILED, error=error, result=None)
                if pause is None:
                    return None  # left running: the supervisor's heartbeat check ends it
                time.sleep(pause)
        return None

    def retry(self, job: Job, snapshot: bytes, delay: float) -> str | None:
        """Queue the next run of a failed job, to start in `delay` seconds; its id."""
        rt = self.rt
        again = replace(
            job,
            id=secrets.token_urlsafe(24),
            state=QUEUED,
            created_at=time.time(),
            started_at=None,
            finished_at=None,
            expires_at=None,
            error=None,
            cancel_requested=False,
            worker=None,
            result_status=None,
            result_headers=None,
            trigger=RETRY,
            attempt=job.attempt + 1,
            retry_of=job.id,
            retried_as=None,
            idempotency_key=None,  # held by the first run, which the caller asked for
            fingerprint=None,
        )
        try:
            rt.jobs.submit(again, snapshot, delay)
            rt.jobs.store.mark_retried(job.id, again.id)
        except Exception as exc:  # the failure stands; say why no retry follows
            rt.log.error("job retry not queued: %s", exc, extra=log_fields(job))
            return None
        if rt.jobs.metrics is not None:
            rt.jobs.metrics.retries.labels(job.zone, job.script).inc()
            rt.jobs.metrics.entered(job.zone, job.script, QUEUED)
        extra = {**log_fields(again), "retry_of": job.id, "attempt": again.attempt}
        rt.log.info("job retry queued", extra={**extra, "delay_s": round(delay, 3)})
        return again.id

    def run(self, job: Job, snapshot: bytes | None) -> Outcome:
        rt = self.rt
        if snapshot is None:
            return Outcome(FAILED, "the job's request was not found")
        parent = propagate.extract({"traceparent": job.traceparent})
        name = f"job {url_for_script(job.zone, job.script)}"
        wsgi = environ(snapshot)
        # Who called, as a synchronous call's script is told (callers.hand_over).
        wsgi[CALLER_ENVIRON_KEY] = job.caller or ANONYMOUS_ID
        wsgi[OWNER_ENVIRON_KEY] = job.owner or None
        wsgi[JOB_ID_ENVIRON_KEY], wsgi[ATTEMPT_ENVIRON_KEY] = job.id, job.attempt
        fields = log_fields(job)
        with (
            self.app.request_context(wsgi),
            rt.tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER) as span,
        ):
            attributes = {"scriptgate.job_id": job.id, "scriptgate.zone": job.zone}
            if job.caller and job.caller != ANONYMOUS_ID:
                attributes["enduser.id"] = job.caller
            span.set_attributes(attributes)
            req = request._get_current_object()  # type: ignore[attr-defined]
            ctx = RequestContext(job.zone, req.remote_addr or "", span)
            ctx.caller = Caller(fields["caller"])  # its id only: the key is not kept
            # Failures are logged with the job's id and caller; they count as job states,
            # not as HTTP script errors (no one waited on an HTTP worker for them).
            job_log = JobLog(rt.log, {"job_id": job.id, "caller": fields["caller"]})
            job_rt = replace(rt, metrics=None, log=job_log)
            watch = Watch(rt.jobs.store, job.id, self.shutdown, job_rt.log)
            limit, scrub = rt.settings.job_log_limit, rt.secrets.scrub
            output = JobOutput(rt.jobs.store, job.id, limit, scrub, job_rt.log)
            try:
                outcome = self.attempt(job_rt, ctx, req, watch, output)
            finally:
                output.close()  # before the final state: no line comes after it
            span.set_attributes(
                {"scriptgate.script": ctx.script, "scriptgate.job_state": outcome.state}
            )
            if outcome.state in (FAILED, TIMED_OUT):
                span.set_status(Status(StatusCode.ERROR, f"job {outcome.state}"))
        return outcome

    def attempt(
        self, rt: Runtime, ctx: RequestContext, req: Any, watch: Watch, output: JobOutput
    ) -> Outcome:
        """The synchronous call's stages from lookup to conversion, answers captured."""
        limit = rt.settings.job_max_result_bytes
        script: LoadedScript | None = None
        try:
            with script_refusals():
                script = lookup(rt, ctx, parse_target(req.path))
            check_method(req.method, script.methods)
            seconds = script.job_timeout or rt.settings.job_timeout
            fields = {"job_id": watch.job_id}  # the caller comes from ctx
            answer = call_handler(
                rt, ctx, script, req, seconds, watch, log_fields=fields, output=output
            )
            return Outcome(SUCCEEDED, result=capture(answer, limit))
        except ScriptStopped:
            if watch.cancelled:
                return Outcome(CANCELLED, "cancelled")
            return Outcome(FAILED, "interrupted: the job worker was stopped")
        except ScriptTimedOut as exc:
            delay = script.retry_delay if script is not None else None
            return Outcome(TIMED_OUT, "timeout", self.answer(exc, ctx), delay)
        except (CallerError, InvalidParameters) as exc:  # a 4xx answer, as the call's
            return Outcome(SUCCEEDED, result=self.answer(exc, ctx))
        except RequestError as exc:  # 404 (deleted since), 405, 500
            cause = exc.__cause__
            error = str(cause) if isinstance(cause, ResultTooLarge) else exc.error
            # Retried: the script raised or its runner died; not a missing script, a
            # wrong method or a result too large, which a re-run would only repeat.
            again = isinstance(exc, ScriptFailed) and not isinstance(cause, ResultTooLarge)
            delay = script.retry_delay if again and script is not None else None
            return Outcome(FAILED, error, self.answer(exc, ctx), delay)
        except Exception as exc:  # a platform bug: logged whole, reported as a 500
            extra = {"trace_id": ctx.trace_id, "caller": ctx.caller.id}
            rt.log.error("job failed outside its script", exc_info=exc, extra=extra)
            return Outcome(FAILED, ScriptFailed.error, self.answer(ScriptFailed(), ctx))

    def answer(self, exc: RequestError, ctx: RequestContext) -> Result:
        return capture(render_error(exc, ctx.trace_id), self.rt.settings.job_max_result_bytes)
