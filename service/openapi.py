"""GET /_platform/openapi.json: an OpenAPI 3.1 document of the scripts, built from them.

Each script is a path; its summary and description come from its docstring, its query
parameters and JSON body from its handler's declarations (params.py), its security
scheme from its zone, and every error it can answer with from the contract, all as the
one JSON error body. A caller sees only the zones it may call (access.may_call): without
a key, the root zone; with X-API-Key or X-Admin-Key, that zone too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Request, Response, jsonify

from service.access import ZONE_KEY_HEADERS, may_call, zone_keys
from service.describe import ScriptState, all_states
from service.jobs.api_doc import JOB_PATHS, JOB_SCHEMAS, JOBS_TAG, job_answers
from service.loader import DEFAULT_METHODS
from service.params import Params
from service.resolve import ZONES

if TYPE_CHECKING:
    from service.record import RequestContext
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
        "error": {"type": "string", "examples": ["unauthorized"]},
        "reason": {"type": "string", "examples": ["api_key"]},
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
# status -> (component name, description, schema)
ERRORS = {
    "400": ("InvalidParameters", "A parameter is missing or does not fit.", "FieldErrors"),
    "401": ("Unauthorized", "The zone's key header is missing or wrong.", "Error"),
    "403": ("Forbidden", "The caller's address is not allowed.", "Error"),
    "413": ("PayloadTooLarge", "The body is over MAX_BODY_BYTES.", "Error"),
    "429": ("TooManyRequests", "The script's CONCURRENCY is reached; retry.", "Error"),
    "500": ("ScriptFailed", "The script raised or does not load; the log has why.", "Error"),
    "504": ("Timeout", "The script ran past its TIMEOUT.", "Error"),
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
    """The document for the scripts this caller may call, broken ones included (marked
    as such)."""
    schemas: dict[str, Any] = {
        "Error": ERROR_SCHEMA,
        "FieldErrors": FIELD_ERRORS_SCHEMA,
        **JOB_SCHEMAS,
    }
    states = all_states(rt, visible)
    zones = tuple(zone for zone in ZONES if any(state.zone == zone for state in states))
    paths = {state.url: path_item(rt, state, schemas) for state in states}
    paths.update(JOB_PATHS)  # every caller may follow the jobs it starts
    header = {"$ref": "#/components/headers/X-Trace-Id"}
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
            "responses": {
                name: {
                    "description": text,
                    "headers": {"X-Trace-Id": header},
                    "content": {"application/json": {"schema": {"$ref": _SCHEMAS_REF + schema}}},
                }
                for name, text, schema in ERRORS.values()
            },
            "headers": {"X-Trace-Id": TRACE_HEADER},
            "securitySchemes": {
                SCHEMES[zone]: {"type": "apiKey", "in": "header", "name": header_name}
                for zone, (header_name, _) in ZONE_KEY_HEADERS.items()
            },
        },
    }


def path_item(rt: Runtime, state: ScriptState, schemas: dict[str, Any]) -> dict[str, Any]:
    script = state.script
    methods = sorted((script.methods if script else DEFAULT_METHODS) - {"HEAD"})
    keyed = state.zone in SCHEMES and zone_keys(state.zone, rt.settings)[1]
    prefix = re.sub(r"[^A-Za-z0-9]+", "_", f"{state.zone}_{state.path}")
    shared = _hoist(script.params, prefix + ".", schemas) if script and script.params else {}
    item: dict[str, Any] = {}
    for method in methods:
        operation: dict[str, Any] = {"tags": [state.zone], "operationId": f"{method}_{prefix}"}
        statuses = ["500"]
        if script is None:
            operation["summary"] = f"{state.path} (broken: {state.state})"
            operation["description"] = (
                f"This script does not load ({state.state}); `scriptgate check` or "
                "/_platform/routes?detail=1 says why."
            )
            operation["x-scriptgate-state"] = state.state
        else:
            operation["summary"] = script.summary or state.path
            if script.description:
                operation["description"] = script.description
            operation.update(_declared(shared, method))
            statuses += ["504"]
            statuses += ["400"] if script.params else []
            statuses += ["429"] if script.concurrency else []
            statuses += ["413"] if method not in NO_BODY_METHODS else []
        if keyed:
            operation["security"] = [{SCHEMES[state.zone]: []}]
            statuses.append("401")
        if rt.settings.api_trusted_ips or (state.zone == "admin" and rt.settings.admin_trusted_ips):
            statuses.append("403")
        operation["responses"] = _responses(statuses)
        if script is not None:
            job_answers(operation["responses"], script.run_async)
        item[method.lower()] = operation
    return item


def _declared(shared: dict[str, Any], method: str) -> dict[str, Any]:
    """The operation's parameters, and its body unless the method takes none."""
    declared = {"parameters": shared["parameters"]} if shared.get("parameters") else {}
    if "requestBody" in shared and method not in NO_BODY_METHODS:
        declared["requestBody"] = shared["requestBody"]
    return declared


def _responses(statuses: list[str]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "What the script returns: JSON for a dict or list, text for a "
            "str, a file for bytes or send_file (204 for None).",
            "headers": {"X-Trace-Id": {"$ref": "#/components/headers/X-Trace-Id"}},
        }
    }
    for status in sorted(statuses):
        responses[status] = {"$ref": "#/components/responses/" + ERRORS[status][0]}
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
