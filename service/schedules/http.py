"""/_platform/schedules: every schedule and how it stands; pause and resume a script's.

Who sees the listing is decided as for routes (PLATFORM_TRUSTED_IPS, else a key with a
platform scope): it names scripts, as routes does. Pausing and resuming need a key with
the `platform:schedules` scope (ADMIN_API_KEY has `platform:*`), sent in X-Admin-Key.
A pause is kept in the store, so it holds across restarts and for every server.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify

from service.http.errors import QueueUnavailable, ScheduleNotFound
from service.jobs.http import JOBS_PREFIX, iso_time, store_errors
from service.schedules.backends import open_store
from service.schedules.clock import clock_for
from service.schedules.discovery import Scheduled, discover
from service.schedules.store import STARTED, ScheduleState, schedule_key
from service.schedules.times import next_time
from service.scripts.resolve import PLATFORM_PREFIX, ZONES

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

SCHEDULES_PATH = f"{PLATFORM_PREFIX}/schedules"
SCHEDULES_PREFIX = SCHEDULES_PATH + "/"
PAUSE, RESUME = "/pause", "/resume"


def schedule_list(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """GET /_platform/schedules: {"schedules": [...], "broken": [...]}."""
    found = discover(rt)
    with store_errors(rt):
        entries = describe_all(rt, [f for f in found if f.spec is not None])
    broken = [{"script": f.url, "zone": f.zone, "error": f.error} for f in found if f.spec is None]
    response = jsonify(schedules=entries, broken=broken)
    response.headers["Cache-Control"] = "no-store"
    return response


def describe_all(rt: Runtime, found: list[Scheduled]) -> list[dict[str, Any]]:
    store = open_store(rt.jobs)
    states = {schedule_key(s.zone, s.script, s.cron): s for s in store.states()}
    paused = store.paused()
    now = clock_for(rt.settings.schedule_test_clock).now()
    entries = []
    for item in found:
        assert item.spec is not None
        tz = item.spec.timezone or rt.settings.schedule_tz
        for cron in item.spec.crons:
            state = states.get(schedule_key(item.zone, item.script, cron))
            entries.append(
                {
                    "script": item.url,
                    "zone": item.zone,
                    "schedule": cron,
                    "timezone": tz,
                    "next_run": iso_time(next_time(cron, tz, now)),
                    "last_run": last_run(rt, state),
                    "last_success": iso_time(state.last_success_at) if state else None,
                    "consecutive_failures": state.failures if state else 0,
                    "paused": (item.zone, item.script) in paused,
                    "overlap": item.spec.overlap,
                    "catchup_s": item.spec.catchup
                    if item.spec.catchup is not None
                    else rt.settings.schedule_catchup,
                    "method": item.spec.method,
                }
            )
    return entries


def last_run(rt: Runtime, state: ScheduleState | None) -> dict[str, Any] | None:
    """The last scheduled time handled: its job and the job's state when it started,
    else `skipped` or `missed`."""
    if state is None or state.last_run_at is None or not state.last_outcome:
        return None
    job_id = state.last_job if state.last_outcome == STARTED else None
    run: dict[str, Any] = {
        "scheduled_at": iso_time(state.last_run_at),
        "outcome": state.last_outcome,
        "job_id": job_id,
        "state": state.last_outcome,
    }
    if job_id is not None:
        job = rt.jobs.store.get(job_id, time.time())
        run["state"] = job.state if job is not None else "expired"
        run["status_url"] = JOBS_PREFIX + job_id
    return run


def schedule_steer(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """POST /_platform/schedules/<zone>/<path>/pause or /resume: the script's schedules
    after the change."""
    rest = req.path[len(SCHEDULES_PREFIX) :]
    pause = rest.endswith(PAUSE)
    rest = rest[: -len(PAUSE if pause else RESUME)]
    zone, _, script = rest.partition("/")
    if zone not in ZONES or not script:
        raise ScheduleNotFound()
    found = [f for f in discover(rt) if (f.zone, f.script) == (zone, script) and f.spec]
    if not found:
        raise ScheduleNotFound()
    try:
        open_store(rt.jobs).set_paused(zone, script, pause, time.time())
        entries = describe_all(rt, found)
    except Exception as exc:
        rt.log.error("schedule store error", exc_info=exc)
        raise QueueUnavailable() from None
    rt.log.info(
        "schedule paused" if pause else "schedule resumed",
        extra={"zone": zone, "script": script, "caller": ctx.caller.id},
    )
    return jsonify(schedules=entries)
