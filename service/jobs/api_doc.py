"""The job endpoints in the OpenAPI document: the job record, one job, the run history,
its result, its log lines and its events (SSE).

Kept beside the code that answers them (http.py), so the record's fields and the
listing's filters are described where they are made; openapi.py adds them to every
caller's document (any key may follow its own jobs).
"""

from __future__ import annotations

from typing import Any

from service.jobs.history import DEFAULT_LIMIT, MAX_LIMIT
from service.jobs.store import STATES, TRIGGERS

_TIME = {"type": ["string", "null"], "format": "date-time"}
_MS = {"type": ["number", "null"], "description": "milliseconds"}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{32}$"}
_MAYBE_ID = {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{32}$"}

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One run of a script as a job (GET /_platform/jobs/{id}).",
    "required": ["id", "state", "script", "caller", "trigger", "attempt", "attempts"],
    "properties": {
        "id": _ID,
        "state": {"enum": list(STATES)},
        "script": {"type": "string", "examples": ["/api/report.py"]},
        "method": {"type": "string"},
        "query": {
            "type": "object",
            "description": "The query, redacted as the request log line shows it.",
        },
        "caller": {
            "type": ["string", "null"],
            "description": "The id of the key that started it (`anonymous` without one).",
        },
        "trigger": {"enum": list(TRIGGERS)},
        "attempt": {"type": "integer", "minimum": 1, "description": "This run's number."},
        "attempts": {"type": "integer", "minimum": 1, "description": "1 + the script's RETRIES"},
        "retry_of": {**_MAYBE_ID, "description": "The run this one retries."},
        "retried_as": {**_MAYBE_ID, "description": "The run that retries this one."},
        "progress": {
            "type": ["object", "null"],
            "description": "The script's last `progress(fraction, message)`; null before.",
            "properties": {
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                "message": {"type": "string", "maxLength": 200},
            },
        },
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "created_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "expires_at": _TIME,
        "queued_ms": _MS,
        "duration_ms": _MS,
        "status_url": {"type": "string"},
        "cancel_requested": {"type": "boolean"},
        "error": {"type": "string"},
        "result": {
            "type": "object",
            "properties": {"status": {"type": "integer"}, "url": {"type": "string"}},
        },
    },
}
JOB_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["jobs", "next"],
    "properties": {
        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
        "next": {
            "type": ["string", "null"],
            "description": "The `cursor` of the next page; null on the last.",
        },
    },
}


LOG_LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One of the run's own lines: its `logging` records (`logger`) and "
    "what it wrote to stdout or stderr (`stream`).",
    "required": ["id", "time", "level", "message"],
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "The event's number."},
        "time": {"type": "string", "format": "date-time"},
        "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]},
        "logger": {"type": "string"},
        "stream": {"enum": ["stdout", "stderr", "scriptgate"]},
        "message": {"type": "string"},
    },
}
JOB_LOGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "state", "lines", "next", "more"],
    "properties": {
        "id": _ID,
        "state": {"enum": list(STATES)},
        "lines": {"type": "array", "items": {"$ref": "#/components/schemas/JobLogLine"}},
        "next": {"type": "integer", "description": "Send as `after` for the lines after."},
        "more": {"type": "boolean", "description": "More lines are stored already."},
    },
}


def _query(name: str, schema: dict[str, Any], text: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": text}


_LIST_PARAMETERS = [
    _query("script", {"type": "string"}, "A script's URL path, as a job's `script`."),
    _query("state", {"enum": list(STATES)}, "Jobs in this state."),
    _query("trigger", {"enum": list(TRIGGERS)}, "Jobs started this way."),
    _query("since", {"type": "string", "format": "date-time"}, "Created at or after."),
    _query("until", {"type": "string", "format": "date-time"}, "Created before."),
    _query("caller", {"type": "string"}, "A key id (a `platform:jobs` key: anyone's)."),
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "Jobs per page.",
    ),
    _query("cursor", {"type": "string"}, "The `next` of the page before."),
]
_SECURITY = [{"apiKey": []}, {"adminKey": []}]
_EVENTS_TEXT = (
    "Server-Sent Events: `state` (data: state, at, and at the end error and status), "
    "`progress` (fraction, message) and `log` (a line, as /logs has it), each with its "
    "number as `id`. The stream ends with the final state, or after JOB_EVENTS_SECONDS "
    "(60 s by default) with a `retry` hint: reconnect with `Last-Event-ID` to resume "
    "with nothing lost or repeated (EventSource does so itself). After the final state "
    "a reconnection gets 204."
)
_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": _ID}


def _ok(description: str, schema: str | None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        ref = {"$ref": "#/components/schemas/" + schema}
        answer["content"] = {"application/json": {"schema": ref}}
    return answer


_NOT_FOUND = {
    "description": "No such job, expired, or another caller's.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_CONFLICT = {
    "description": "Not in a state that allows this; `reason` is the state.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
JOB_PATHS: dict[str, Any] = {
    "/_platform/jobs": {
        "get": {
            "tags": ["jobs"],
            "operationId": "list_jobs",
            "summary": "The jobs this key started, newest first (every caller's for a "
            "platform:jobs key).",
            "security": _SECURITY,
            "parameters": _LIST_PARAMETERS,
            "responses": {
                "200": _ok("One page of the run history.", "JobList"),
                "400": {"$ref": "#/components/responses/InvalidParameters"},
                "401": {"$ref": "#/components/responses/Unauthorized"},
            },
        }
    },
    "/_platform/jobs/{id}": {
        "parameters": [_JOB_ID],
        "get": {
            "tags": ["jobs"],
            "operationId": "get_job",
            "summary": "A job's record.",
            "security": _SECURITY,
            "responses": {"200": _ok("The job.", "Job"), "404": _NOT_FOUND},
        },
        "delete": {
            "tags": ["jobs"],
            "operationId": "cancel_job",
            "summary": "Cancel a job: a queued one never runs, a running one is stopped.",
            "security": _SECURITY,
            "responses": {
                "200": _ok("Cancelled before it ran.", "Job"),
                "202": _ok("Running: asked to stop.", "Job"),
                "404": _NOT_FOUND,
                "409": _CONFLICT,
            },
        },
    },
    "/_platform/jobs/{id}/result": {
        "parameters": [_JOB_ID],
        "get": {
            "tags": ["jobs"],
            "operationId": "get_job_result",
            "summary": "The response the synchronous call would have given.",
            "security": _SECURITY,
            "responses": {
                "200": _ok("Status, headers and body of the script's answer.", None),
                "404": _NOT_FOUND,
                "409": _CONFLICT,
            },
        },
    },
    "/_platform/jobs/{id}/logs": {
        "parameters": [_JOB_ID],
        "get": {
            "tags": ["jobs"],
            "operationId": "get_job_logs",
            "summary": "The run's own log lines (print, logging, stderr), oldest first; "
            "at most JOB_LOG_LIMIT bytes of them per run.",
            "security": _SECURITY,
            "parameters": [
                _query(
                    "after",
                    {"type": "integer", "minimum": 0},
                    "The `next` of an earlier answer: only the lines after it.",
                )
            ],
            "responses": {
                "200": _ok("Up to 1000 events' lines.", "JobLogs"),
                "400": {"$ref": "#/components/responses/InvalidParameters"},
                "404": _NOT_FOUND,
            },
        },
    },
    "/_platform/jobs/{id}/events": {
        "parameters": [_JOB_ID],
        "get": {
            "tags": ["jobs"],
            "operationId": "follow_job",
            "summary": "The job's state, progress and log lines as they happen (SSE).",
            "description": _EVENTS_TEXT,
            "security": _SECURITY,
            "parameters": [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                    "description": "The `id` of the last event received: resume after it.",
                }
            ],
            "responses": {
                "200": {
                    "description": "The event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {"description": "Resumed after the final state: nothing follows."},
                "400": {
                    "description": "A Last-Event-ID this stream did not send.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
                "404": _NOT_FOUND,
            },
        },
    },
}
JOB_SCHEMAS = {
    "Job": JOB_SCHEMA,
    "JobList": JOB_LIST_SCHEMA,
    "JobLogLine": LOG_LINE_SCHEMA,
    "JobLogs": JOB_LOGS_SCHEMA,
}
JOBS_TAG = {"name": "jobs", "description": "Runs that outlive a request (Prefer: respond-async)."}
