"""GET /_platform/jobs: the run history, newest first, one keyset page at a time.

A key sees the runs it started; a key that may see every caller's (access.policy
SEE_ALL_RUNS: the `platform:jobs` scope) sees everyone's, and may filter by `caller`.
Each filter is checked here, a bad one a 400 naming it; the stores answer the query
(jobs/store.py JobQuery) with their indexes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from datetime import timezone
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify

from service.access.keys import Caller
from service.access.policy import SEE_ALL_RUNS, allowed
from service.http.errors import InvalidParameters
from service.jobs.http import JOB_ID, describe, may_see, store_errors
from service.jobs.store import STATES, TRIGGERS, JobQuery
from service.scripts.resolve import zone_of
from service.small import parse_iso

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

DEFAULT_LIMIT, MAX_LIMIT = 50, 200
LIST_PARAMETERS = frozenset(
    {"script", "state", "trigger", "since", "until", "caller", "limit", "cursor"}
)


def job_list(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    """GET /_platform/jobs: the caller's runs (everyone's for `platform:jobs`), newest
    first, one keyset page at a time."""
    query = list_query(req.args, ctx.caller)
    with store_errors(rt):
        page = rt.jobs.store.list_jobs(query, time.time())
    jobs = [describe(job) for job in page.jobs if may_see(rt, ctx.caller, ctx.client_ip, job)]
    following = None if page.after is None else encode_cursor(page.after)
    response = jsonify(jobs=jobs, next=following)
    response.headers["Cache-Control"] = "no-store"
    return response


def list_query(args: Any, caller: Caller) -> JobQuery:
    """The listing's filters, each checked: a bad one is a 400 naming it."""
    unknown = sorted(set(args) - LIST_PARAMETERS)
    if unknown:
        raise bad_query(unknown[0], f"unknown parameter; use {', '.join(sorted(LIST_PARAMETERS))}")
    for name in args:
        if len(args.getlist(name)) > 1:
            raise bad_query(name, "given more than once")
    zone = script = None
    if "script" in args:
        zone, script = script_filter(args["script"])
    state, trigger = args.get("state"), args.get("trigger")
    if state is not None and state not in STATES:
        raise bad_query("state", f"one of {', '.join(STATES)}")
    if trigger is not None and trigger not in TRIGGERS:
        raise bad_query("trigger", f"one of {', '.join(TRIGGERS)}")
    since, until = moment(args, "since"), moment(args, "until")
    if since is not None and until is not None and since >= until:
        raise bad_query("until", "must be later than since")
    who = caller.id
    if "caller" in args:
        if not allowed(caller, SEE_ALL_RUNS) and args["caller"] != caller.id:
            raise bad_query(
                "caller",
                "only a key with the platform:jobs scope may ask for another caller's jobs",
            )
        who = args["caller"]
    elif allowed(caller, SEE_ALL_RUNS):
        who = None
    return JobQuery(
        limit=limit_of(args),
        caller=who,
        zone=zone,
        script=script,
        state=state,
        trigger=trigger,
        since=since,
        until=until,
        after=decode_cursor(args["cursor"]) if "cursor" in args else None,
    )


def bad_query(name: str, message: str) -> InvalidParameters:
    """The 400 a declared parameter that does not fit gets, naming the parameter."""
    kind = {"limit": "integer", "since": "date-time", "until": "date-time"}.get(name, "string")
    return InvalidParameters([{"in": "query", "name": name, "message": message, "type": kind}])


def script_filter(value: str) -> tuple[str, str]:
    """`/api/report.py` (the record's `script`) -> ("api", "report.py")."""
    zone, rest = zone_of(value if value.startswith("/") else "/" + value)
    if not rest or zone == "platform":
        raise bad_query("script", "a script's URL path, as a job's `script` shows it")
    return zone, rest


def moment(args: Any, name: str) -> float | None:
    """An ISO 8601 time (`2026-12-06T05:00:00Z`, or a date); UTC when it names no zone."""
    text = args.get(name)
    if text is None:
        return None
    try:
        parsed = parse_iso(text)
    except ValueError:
        raise bad_query(name, "an ISO 8601 time, such as 2026-12-06T05:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def limit_of(args: Any) -> int:
    text = args.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise bad_query("limit", f"a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def encode_cursor(after: tuple[float, str]) -> str:
    """Where the next page starts: the last job's (created_at, id), opaque to callers."""
    raw = json.dumps([repr(after[0]), after[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    """A cursor this endpoint made, or a 400: anything else is not a position."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created, job_id = json.loads(raw)
        position = (float(created), job_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_query("cursor", "not a cursor from this listing's `next`") from None
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise bad_query("cursor", "not a cursor from this listing's `next`")
    if not math.isfinite(position[0]) or position[0] < 0:
        raise bad_query("cursor", "not a cursor from this listing's `next`")
    return position
