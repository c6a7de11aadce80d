"""The schedule endpoints in the OpenAPI document, beside the code that answers them
(http.py); openapi.py adds them with one call."""

from __future__ import annotations

from typing import Any

from service.schedules.store import OUTCOMES

_TIME = {"type": ["string", "null"], "format": "date-time"}
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

SCHEDULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One cron expression of a script's SCHEDULE, and how it stands.",
    "required": ["script", "zone", "schedule", "timezone", "next_run", "last_run", "paused"],
    "properties": {
        "script": {"type": "string", "examples": ["/api/report.py"]},
        "zone": {"enum": ["root", "api", "admin"]},
        "schedule": {"type": "string", "examples": ["0 7 * * 1-5"]},
        "timezone": {"type": "string", "examples": ["Europe/Paris"]},
        "next_run": _TIME,
        "last_run": {
            "type": ["object", "null"],
            "description": "The last scheduled time handled; null before the first.",
            "properties": {
                "scheduled_at": _TIME,
                "outcome": {"enum": list(OUTCOMES)},
                "job_id": {"type": ["string", "null"]},
                "state": {
                    "type": "string",
                    "description": "The job's state when it started, else the outcome.",
                },
                "status_url": {"type": "string"},
            },
        },
        "last_success": _TIME,
        "consecutive_failures": {"type": "integer", "minimum": 0},
        "paused": {"type": "boolean"},
        "overlap": {"type": "boolean", "description": "SCHEDULE_OVERLAP"},
        "catchup_s": {"type": "number", "description": "SCHEDULE_CATCHUP, seconds"},
        "method": {"type": "string"},
    },
}
SCHEDULE_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schedules"],
    "properties": {
        "schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}},
        "broken": {
            "type": "array",
            "description": "Scripts that mention SCHEDULE but do not load.",
            "items": {
                "type": "object",
                "properties": {
                    "script": {"type": "string"},
                    "zone": {"type": "string"},
                    "error": {"type": "string"},
                },
            },
        },
    },
}
_LISTED = {
    "description": "The schedules.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScheduleList"}}},
}


def _steer(action: str, summary: str) -> dict[str, Any]:
    return {
        "parameters": [
            {
                "name": "zone",
                "in": "path",
                "required": True,
                "schema": {"enum": ["root", "api", "admin"]},
            },
            {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "post": {
            "tags": ["schedules"],
            "operationId": f"{action}_schedule",
            "summary": summary,
            "security": [{"adminKey": []}],
            "responses": {
                "200": _LISTED,
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "403": {"$ref": "#/components/responses/Forbidden"},
                "404": {"description": "The script has no schedule.", **_ERROR},
            },
        },
    }


SCHEDULE_PATHS: dict[str, Any] = {
    "/_platform/schedules": {
        "get": {
            "tags": ["schedules"],
            "operationId": "list_schedules",
            "summary": "Every script's schedules: next run, last run, paused.",
            "responses": {
                "200": _LISTED,
                "403": {"$ref": "#/components/responses/Forbidden"},
            },
        }
    },
    "/_platform/schedules/{zone}/{path}/pause": _steer(
        "pause", "Pause a script's schedules (a platform:schedules key); kept across restarts."
    ),
    "/_platform/schedules/{zone}/{path}/resume": _steer(
        "resume", "Resume a paused script's schedules (a platform:schedules key)."
    ),
}


def add_schedules(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """The schedule endpoints and their schemas, added to the document's."""
    paths.update(SCHEDULE_PATHS)
    schemas.update({"Schedule": SCHEDULE_SCHEMA, "ScheduleList": SCHEDULE_LIST_SCHEMA})
