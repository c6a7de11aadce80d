"""Following a job: its own log lines (/_platform/jobs/<id>/logs) and its events as they
happen (/_platform/jobs/<id>/events, Server-Sent Events).

Both read the run's numbered events from the job store (output.py writes the lines and
progress, the store each state change), so every web worker of every server answers
alike, and `Last-Event-ID` resumes exactly after the last event a client saw. Who may
follow a job is who may see it (http.may_see): anyone else gets 404.

An events response polls the store every POLL_SECONDS and lives at most
JOB_EVENTS_SECONDS: a server thread is not held by one follower forever. It ends with the
job's final state, or at that bound with nothing more to say, after which the client
reconnects with `Last-Event-ID` (EventSource does so by itself, after `retry`). A client
that resumes after the final state gets 204, which tells EventSource to stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from flask import Request, Response, jsonify

from service.http.errors import BadHeader
from service.jobs.history import bad_query
from service.jobs.http import (
    EVENTS_SUFFIX,
    JOBS_PREFIX,
    LOGS_SUFFIX,
    store_errors,
    visible_job,
)
from service.jobs.store import FINISHED, LOG, STATE, Event
from service.small import iso_z

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

LOG_PAGE = 1000  # events read for one /logs answer
EVENT_BATCH = 500
POLL_SECONDS = 0.05
KEEPALIVE_SECONDS = 15.0  # a comment line, so a proxy keeps the stream and a gone
# client is noticed (the write fails)
CHECK_SECONDS = 5.0  # how often a quiet stream checks that the job is still on record
RETRY_MS = 1000  # the SSE `retry`: when EventSource reconnects after the stream ends
LAST_EVENT_ID = "Last-Event-ID"


def position(text: str | None) -> int | None:
    """An event number as a client sends it back, or None when it is not one."""
    if text is None or not text.isdigit() or len(text) > 15:
        return None
    return int(text)


def job_logs(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """The run's log lines, oldest first, from just after `after` (an earlier answer's
    `next`): `{"lines": [...], "next": n, "more": bool, "state": ...}`."""
    job = visible_job(rt, ctx, req.path[len(JOBS_PREFIX) : -len(LOGS_SUFFIX)])
    unknown = sorted(set(req.args) - {"after"})
    if unknown:
        raise bad_query(unknown[0], "unknown parameter; use after")
    after = 0
    if "after" in req.args:
        found = position(req.args["after"])
        if found is None:
            raise bad_query("after", "an event number: a `next` from an earlier answer")
        after = found
    with store_errors(rt):
        events = rt.jobs.store.events(job.id, after, LOG_PAGE)
    lines = [{"id": e.id, **e.data} for e in events if e.kind == LOG]
    response = jsonify(
        id=job.id,
        state=job.state,
        lines=lines,
        next=events[-1].id if events else after,
        more=len(events) == LOG_PAGE,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def sse(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.data)}\n\n"


def job_events(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """Server-Sent Events: `state`, `progress` and `log`, from after Last-Event-ID."""
    job = visible_job(rt, ctx, req.path[len(JOBS_PREFIX) : -len(EVENTS_SUFFIX)])
    after = 0
    header = req.headers.get(LAST_EVENT_ID)
    if header is not None and header.strip():
        found = position(header.strip())
        if found is None:
            raise BadHeader(LAST_EVENT_ID, "an event id this stream sent")
        after = found
    store = rt.jobs.store
    with store_errors(rt):
        first = store.events(job.id, after, EVENT_BATCH)
    if job.state in FINISHED and not first:
        if after:
            return Response(status=204)  # past the final state: EventSource stops
        # A run recorded before events were: its state, once, with no id.
        data = json.dumps({"state": job.state, "at": iso_z(job.finished_at)})
        return _stream_response(iter([f"event: {STATE}\ndata: {data}\n\n"]))
    return _stream_response(_follow(rt, job.id, after, first))


def _stream_response(body: Iterator[str]) -> Response:
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _follow(rt: Runtime, job_id: str, after: int, first: list[Event]) -> Iterator[str]:
    """The stream's body, run by the server as it sends it (outside the request)."""
    store = rt.jobs.store
    metrics = rt.jobs.metrics
    gauge = metrics.event_streams if metrics is not None else None
    if gauge is not None:
        gauge.inc()
    try:
        now = time.monotonic()
        ends = now + rt.settings.job_events_seconds
        quiet_since = checked = now
        yield f"retry: {RETRY_MS}\n\n"
        events: list[Event] = first
        # Bounded: the loop ends at `ends` at the latest (each pass sleeps or sends).
        while True:
            for event in events:
                yield sse(event)
                after = event.id
                if event.kind == STATE and event.data.get("state") in FINISHED:
                    return
            now = time.monotonic()
            if now >= ends:
                yield ": the stream's time is up: reconnect with Last-Event-ID\n\n"
                return
            if events:
                quiet_since = now
            elif now - quiet_since >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet_since = now
            if not events and now - checked >= CHECK_SECONDS:
                checked = now
                if store.get(job_id, time.time()) is None:  # past its retention
                    return
            if len(events) < EVENT_BATCH:
                time.sleep(POLL_SECONDS)  # the store has nothing to wake us with
            try:
                events = store.events(job_id, after, EVENT_BATCH)
            except Exception as exc:  # the store went away: end; the client resumes
                rt.log.warning("job events: store error: %s", exc, extra={"job_id": job_id})
                return
    finally:
        if gauge is not None:
            gauge.dec()
