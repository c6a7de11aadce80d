"""GET /_platform/openapi.json: an OpenAPI 3.1 document of the scripts, built from them.

Each script is a path; its summary and description come from its docstring, its query
parameters and JSON body from its handler's declarations (params.py), its security
scheme from its zone, and every refusal it can get as service/refusals.py declares it
(each with an example body), all as the one JSON error body; 202 for a call run as a job.
A caller sees only the scripts it may call (access.guard.may_call): without a key, the
root zone; with X-API-Key or X-Admin-Key, that zone too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify

from service.access.guard import ZONE_KEY_HEADERS, may_call
from service.access.policy import zone_keys
from service.jobs.api_doc import JOB_PATHS, JOB_SCHEMAS, JOBS_TAG
from service.refusals import of_status
from service.scripts.describe import ScriptState, all_states
from service.scripts.loader import DEFAULT_METHODS
from service.scripts.params import Params
from service.scripts.resolve import ZONES

if TYPE_CHECKING:
    from service.http.context import RequestContext
    from service.runtime import Runtime

OPENAPI_VERSION = "3.1.0"
SCHEMES = {"api": "apiKey", "admin": "adminKey"}
ZONE_TAGS = {
    "root": "Scripts in the scripts folder: no key (API_TRUSTED_IPS only).",
    "api": "Scripts in api/: X-API-Key.",
    "admin": "Scripts in admin/: X-Admin-Key (and ADMIN_TRUSTED_IPS).",
}
NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
_DEFS_REF = "#/$defs/"
_SCHEMAS_REF = "#/components/schemas/"

_TRACE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error Scriptgate answers: JSON, with the request's trace id.",
    "required": ["error", "trace_id"],
    "properties": {
        "error": {"type": "string"},
        "reason": {"type": "string", "description": "why, for a status with several causes"},
        "header": {"type": "string", "description": "the header a 401 expects the key in"},
        "trace_id": _TRACE_ID,
    },
}
FIELD_ERRORS_SCHEMA = {
    "type": "object",
    "description": "A 400 for parameters that do not fit: one entry per field at fault.",
    "required": ["error", "fields", "trace_id"],
    "properties": {
        "error": {"const": "invalid parameters"},
        "fields": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["in", "name", "message", "type"],
                "properties": {
                    "in": {"enum": ["query", "body"]},
                    "name": {"type": "string", "description": "the field; '' for the body"},
                    "message": {"type": "string"},
                    "type": {"type": "string", "description": "pydantic's error type"},
                },
            },
        },
        "trace_id": _TRACE_ID,
    },
}
# status -> the component its answers are documented under (refusals.REFUSALS says what)
RESPONSE_NAMES = {
    400: "InvalidParameters",
    401: "Unauthorized",
    403: "Forbidden",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "ScriptFailed",
    503: "Unavailable",
    504: "Timeout",
}
_EXAMPLE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def error_response(status: int) -> dict[str, Any]:
    """The document's answer for a status: each declared refusal's line, and an example
    body of each, as the server writes it."""
    declared = [r for r in of_status(status) if r.scripts]
    lines = [f"`{r.reason}`: {r.doc}" if r.reason else r.doc for r in declared]
    examples = {}
    for refusal in declared:
        body: dict[str, Any] = {"error": refusal.error}
        if refusal.reason:
            body["reason"] = refusal.reason
        if status == 400:
            body["fields"] = [
                {
                    "in": "query",
                    "name": "day",
                    "message": "Input should be a valid date",
                    "type": "date_from_datetime_parsing",
                }
            ]
        body["trace_id"] = _EXAMPLE_TRACE_ID
        examples[refusal.reason or RESPONSE_NAMES[status]] = {"value": body}
    schema = "FieldErrors" if status == 400 else "Error"
    return {
        "description": " ".join(lines),
        "headers": {"X-Trace-Id": {"$ref": "#/components/headers/X-Trace-Id"}},
        "content": {
            "application/json": {"schema": {"$ref": _SCHEMAS_REF + schema}, "examples": examples}
        },
    }


TRACE_HEADER = {
    "description": "The request's trace id: find its log lines and its trace with it.",
    "schema": _TRACE_ID,
}


def openapi_document(rt: Runtime, ctx: RequestContext, req: Request) -> Response:
    keyring = rt.callers.keyring()
    client = req.remote_addr or ""

    def visible(zone: str, path: str) -> bool:
        return may_call(zone, path, client, req.headers, rt.settings, keyring)

    return jsonify(build_document(rt, visible))


def build_document(rt: Runtime, visible: Callable[[str, str], bool] | None) -> dict[str, Any]:
    """The document for the scripts this caller may call. A broken script is left out:
    a caller cannot call it; `scriptgate check` and /_platform/routes?detail=1 say why."""
    schemas: dict[str, Any] = {
        "Error": ERROR_SCHEMA,
        "FieldErrors": FIELD_ERRORS_SCHEMA,
        **JOB_SCHEMAS,
    }
    states = [state for state in all_states(rt, visible) if state.script is not None]
    zones = tuple(zone for zone in ZONES if any(state.zone == zone for state in states))
    paths = {state.url: path_item(rt, state, schemas) for state in states}
    paths.update(JOB_PATHS)  # every caller may follow the jobs it starts
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Scriptgate",
            "version": rt.settings.version,
            "description": "The scripts this caller may call. Authorize with X-API-Key or "
            "X-Admin-Key to see the scripts that key opens.",
        },
        "tags": [{"name": zone, "description": ZONE_TAGS[zone]} for zone in zones] + [JOBS_TAG],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {name: error_response(status) for status, name in RESPONSE_NAMES.items()},
            "headers": {"X-Trace-Id": TRACE_HEADER},
            "securitySchemes": {
                SCHEMES[zone]: {"type": "apiKey", "in": "header", "name": header_name}
                for zone, (header_name, _) in ZONE_KEY_HEADERS.items()
            },
        },
    }


def path_item(rt: Runtime, state: ScriptState, schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation per method the script answers; a script left at the default methods
    is one operation, GET, or POST when it declares a body (it answers both)."""
    script = state.script
    assert script is not None  # broken scripts are not documented (routes?detail=1 are)
    methods = sorted(script.methods - {"HEAD"})
    if script.methods == DEFAULT_METHODS:
        methods = ["POST" if script.params and script.params.body is not None else "GET"]
    keyed = state.zone in SCHEMES and zone_keys(state.zone, rt.settings)[1]
    prefix = re.sub(r"[^A-Za-z0-9]+", "_", f"{state.zone}_{state.path}")
    shared = _hoist(script.params, prefix + ".", schemas) if script.params else {}
    item: dict[str, Any] = {}
    for method in methods:
        operation: dict[str, Any] = {"tags": [state.zone], "operationId": f"{method}_{prefix}"}
        operation["summary"] = script.summary or state.path
        description = script.description or ""
        if script.methods == DEFAULT_METHODS:
            other = "GET" if method == "POST" else "POST"
            description = f"{description}\n\nAlso answers {other}.".strip()
        if description:
            operation["description"] = description
        operation.update(_declared(shared, method))
        statuses = [500, 503, 504]
        statuses += [400] if script.params else []
        statuses += [429] if script.concurrency or keyed else []
        statuses += [413] if method not in NO_BODY_METHODS else []
        if keyed:
            operation["security"] = [{SCHEMES[state.zone]: []}]
            statuses += [401, 403]
        if rt.settings.api_trusted_ips or (state.zone == "admin" and rt.settings.admin_trusted_ips):
            statuses.append(403)
        operation["responses"] = _responses(sorted(set(statuses)), script.run_async)
        item[method.lower()] = operation
    return item


def _declared(shared: dict[str, Any], method: str) -> dict[str, Any]:
    """The operation's parameters, and its body unless the method takes none."""
    declared = {"parameters": shared["parameters"]} if shared.get("parameters") else {}
    if "requestBody" in shared and method not in NO_BODY_METHODS:
        declared["requestBody"] = shared["requestBody"]
    return declared


def _responses(statuses: list[int], run_async: bool) -> dict[str, Any]:
    """The script's own answer (200), or its job (202: always for ASYNC, and for any call
    sent with `Prefer: respond-async`), then the declared refusals it can get."""
    trace = {"X-Trace-Id": {"$ref": "#/components/headers/X-Trace-Id"}}
    responses: dict[str, Any] = {}
    if not run_async:
        responses["200"] = {
            "description": "What the script returns: JSON for a dict or list, text for a "
            "str, a file for bytes or send_file (204 for None).",
            "headers": trace,
        }
    responses["202"] = {
        "description": (
            "ASYNC: every call runs as a job. "
            if run_async
            else "Sent with `Prefer: respond-async`: the call runs as a job. "
        )
        + "Follow it at `Location` (/_platform/jobs/{id}); its result at .../result.",
        "headers": {**trace, "Location": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": _SCHEMAS_REF + "Job"}}},
    }
    for status in statuses:
        responses[str(status)] = {"$ref": "#/components/responses/" + RESPONSE_NAMES[status]}
    return responses


def _hoist(params: Params, prefix: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """Parameters and request body from the declaration's JSON Schema; the classes it
    uses become components named `<zone>_<script>.<Class>` (unique per script)."""
    schema = _rename_refs(params.schema, prefix)
    for name, definition in schema.get("$defs", {}).items():
        schemas[prefix + name] = definition
    properties = schema.get("properties", {})
    shared: dict[str, Any] = {}
    parameters = []
    for p in params.query:
        parameter = {"name": p.name, "in": "query", "required": p.required}
        if p.description:
            parameter["description"] = p.description
        parameter["schema"] = properties.get(p.name, {})
        parameters.append(parameter)
    if parameters:
        shared["parameters"] = parameters
    if params.body is not None:
        body: dict[str, Any] = {"required": params.body.required}
        if params.body.description:
            body["description"] = params.body.description
        body["content"] = {"application/json": {"schema": properties.get(params.body.name, {})}}
        shared["requestBody"] = body
    return shared


def _rename_refs(node: Any, prefix: str) -> Any:
    """A copy of a JSON Schema whose `#/$defs/X` refs point at `#/components/schemas/<prefix>X`."""
    if isinstance(node, dict):
        copy = {key: _rename_refs(value, prefix) for key, value in node.items()}
        ref = copy.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_REF):
            copy["$ref"] = _SCHEMAS_REF + prefix + ref[len(_DEFS_REF) :]
        return copy
    if isinstance(node, list):
        return [_rename_refs(item, prefix) for item in node]
    return node
