"""A script's schedule, read from its SCHEDULE_* attributes when its runner imports it.

    SCHEDULE = "0 7 * * 1-5"          # five-field cron, or a list of them
    SCHEDULE_TZ = "Europe/Paris"      # default: the SCHEDULE_TZ setting, default UTC
    SCHEDULE_PARAMS = {"region": "eu"}  # the declared parameters, checked like a call's
    SCHEDULE_OVERLAP = False          # True: a run may start while the last one runs
    SCHEDULE_CATCHUP = 3600           # seconds: a missed run this recent runs once

A bad value makes the script broken (import_error, shown by `check` and routes), as a
bad TIMEOUT does. Cron expressions are croniter's (five fields only: seconds are a
bench-only idea). SCHEDULE_PARAMS becomes the request the scheduled job runs with:
query parameters as the query string, the body parameter as a JSON body, so the
script's own parameter check applies to it unchanged.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

MAX_SCHEDULES = 20  # cron expressions per script
ATTRIBUTES = ("SCHEDULE", "SCHEDULE_TZ", "SCHEDULE_PARAMS", "SCHEDULE_OVERLAP", "SCHEDULE_CATCHUP")
# The scheduler only asks a runner to import files that contain this word: a thousand
# scripts without a schedule cost a stat each, not an import each.
MARKER = b"SCHEDULE"


class ScheduleError(ValueError):
    """A SCHEDULE_* attribute that cannot be served; its text names the attribute."""


def valid_timezone(name: str) -> str:
    """The IANA name if zoneinfo knows it; raises ScheduleError."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError("SCHEDULE_TZ must be an IANA time zone name, such as Europe/Paris")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"SCHEDULE_TZ: unknown time zone {name!r}") from None
    return name


def valid_cron(expression: Any) -> str:
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ScheduleError(
            "SCHEDULE must be a five-field cron expression (minute hour day month weekday), "
            'such as "0 7 * * 1-5", or a list of them'
        )
    text = " ".join(expression.split())
    if not croniter.is_valid(text):
        raise ScheduleError(f"SCHEDULE: {text!r} is not a valid cron expression")
    return text


@dataclass(frozen=True)
class ScheduleSpec:
    """What a script asks to be run with, as its runner describes it (JSON)."""

    crons: tuple[str, ...]
    timezone: str | None  # None: the SCHEDULE_TZ setting
    overlap: bool
    catchup: float | None  # None: the SCHEDULE_CATCHUP setting
    method: str
    query: str  # the query string the job's request carries
    body: str | None  # the JSON body, when the handler declares a body parameter

    def to_json(self) -> dict[str, Any]:
        return {
            "crons": list(self.crons),
            "timezone": self.timezone,
            "overlap": self.overlap,
            "catchup": self.catchup,
            "method": self.method,
            "query": self.query,
            "body": self.body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        return cls(
            tuple(data["crons"]),
            data.get("timezone"),
            bool(data.get("overlap")),
            None if data.get("catchup") is None else float(data["catchup"]),
            data["method"],
            data.get("query", ""),
            data.get("body"),
        )

    def snapshot(self, url_path: str) -> bytes:
        """The request the job runs with, in jobs/snapshot.py's form: no credentials,
        no client (`remote_addr` empty), host `localhost`."""
        body = (self.body or "").encode("utf-8")
        frozen = {
            "method": self.method,
            "scheme": "http",
            "host": "localhost",
            "root_path": "",
            "path": url_path,
            "query": self.query,
            "headers": [["User-Agent", "scriptgate-scheduler"]],
            "content_type": "application/json" if self.body is not None else None,
            "remote_addr": "",
            "body": base64.b64encode(body).decode("ascii"),
        }
        return json.dumps(frozen).encode("utf-8")


def read_schedule(module: Any, params: Any, methods: list[str]) -> ScheduleSpec | None:
    """The script's schedule, or None without SCHEDULE; raises ScheduleError.

    `params` is the handler's Params (params.py, with its model: this runs in the
    runner), `methods` its METHODS.
    """
    raw = getattr(module, "SCHEDULE", None)
    if raw is None:
        for name in ATTRIBUTES[1:]:
            if hasattr(module, name):
                raise ScheduleError(f"{name} is set but SCHEDULE is not")
        return None
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= MAX_SCHEDULES:
        raise ScheduleError(f"SCHEDULE must be a cron expression or a list of 1 to {MAX_SCHEDULES}")
    crons = tuple(dict.fromkeys(valid_cron(item) for item in items))
    tz = getattr(module, "SCHEDULE_TZ", None)
    timezone = None if tz is None else valid_timezone(tz)
    overlap = getattr(module, "SCHEDULE_OVERLAP", False)
    if not isinstance(overlap, bool):
        raise ScheduleError("SCHEDULE_OVERLAP must be True or False")
    catchup = getattr(module, "SCHEDULE_CATCHUP", None)
    if catchup is not None and (
        isinstance(catchup, bool) or not isinstance(catchup, int | float) or not 0 <= catchup < 1e9
    ):
        raise ScheduleError("SCHEDULE_CATCHUP must be a number of seconds, 0 or more")
    given = getattr(module, "SCHEDULE_PARAMS", None) or {}
    if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
        raise ScheduleError("SCHEDULE_PARAMS must be a dict of parameter names to values")
    query, body = _request_parts(given, params)
    method = _method(methods, body is not None)
    catchup = None if catchup is None else float(catchup)
    return ScheduleSpec(crons, timezone, overlap, catchup, method, query, body)


def _method(methods: list[str], has_body: bool) -> str:
    order = ("POST", "GET") if has_body else ("GET", "POST")
    for method in order:
        if method in methods:
            return method
    raise ScheduleError("a scheduled script must accept GET or POST (METHODS)")


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ScheduleError("SCHEDULE_PARAMS: a query parameter's value must be text or a number")


def _request_parts(given: dict[str, Any], params: Any) -> tuple[str, str | None]:
    """(query string, JSON body or None), checked by the handler's own parameter model:
    a value a call could not send either is refused here, at load."""
    declared = {p.name: p for p in params.all} if params is not None else {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        names = ", ".join(declared) or "none"
        raise ScheduleError(
            f"SCHEDULE_PARAMS: {unknown[0]!r} is not a declared parameter (declared: {names})"
        )
    pairs: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    body = None
    for name, value in given.items():
        param = declared[name]
        if param.where == "body":
            try:
                body = json.dumps(value)
            except (TypeError, ValueError):
                raise ScheduleError(f"SCHEDULE_PARAMS: {name!r} is not JSON") from None
            data[name] = json.loads(body)
        elif param.many:
            values = value if isinstance(value, list | tuple) else [value]
            texts = [_query_text(v) for v in values]
            pairs += [(name, t) for t in texts]
            data[name] = texts
        else:
            pairs.append((name, _query_text(value)))
            data[name] = pairs[-1][1]
    if params is not None and params.model is not None:
        from pydantic import ValidationError

        try:
            params.model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "parameters"
            raise ScheduleError(f"SCHEDULE_PARAMS: {where}: {first['msg']}") from None
    return urlencode(pairs), body
