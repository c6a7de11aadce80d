"""Contender 3: the source post's dispatcher, rebuilt from the code it shows.

A Flask catch-all that maps the URL to a file under BENCH_SCRIPTS_DIR and re-executes
that file on every request (`spec_from_file_location` + `exec_module`), then calls its
`handle` or `main`. Around it, what the post describes: an IP allowlist, plain `!=`
key checks, a trace id header, an in-process request counter and one text log line
per request in BENCH_LOG_FILE. Helpers are imported the ordinary way: `_lib` is on
sys.path, as the post's app directory is, so a helper is imported once per worker.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import uuid

from flask import Flask, jsonify, make_response, request

BASE_DIR = os.path.abspath(os.environ.get("BENCH_SCRIPTS_DIR", "scripts"))
API_KEY = os.environ.get("API_KEY", "")
ADMIN_API_KEY = os.environ.get("ADMIN_API_KEY", "")
ALLOWED_IP_SET = {ip.strip() for ip in os.environ.get("API_TRUSTED_IPS", "").split(",") if ip}
sys.path.insert(0, os.path.join(BASE_DIR, "_lib"))

logger = logging.getLogger("framework")
logger.setLevel(logging.INFO)
_handler = logging.FileHandler(os.environ.get("BENCH_LOG_FILE", os.devnull))
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
logger.addHandler(_handler)

START_TIME = time.time()
METRICS = {"requests_total": 0, "errors_total": 0, "by_area": {"root": 0, "api": 0, "admin": 0}}

app = Flask(__name__)


def resolve(subpath: str) -> tuple[str, str]:
    if subpath.startswith("api/"):
        return "api", os.path.join(BASE_DIR, "api", subpath[4:])
    if subpath.startswith("admin/"):
        return "admin", os.path.join(BASE_DIR, "admin", subpath[6:])
    return "root", os.path.join(BASE_DIR, subpath)


def run_script(script_path: str):
    module_name = "script_" + uuid.uuid4().hex
    spec = importlib.util.spec_from_file_location(module_name, script_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = getattr(module, "handle", None) or getattr(module, "main", None)
    if handler is None:
        raise RuntimeError("no handler")
    return handler(request)


@app.route("/<path:subpath>", methods=["GET", "POST"])
def dispatch(subpath: str):
    trace_id = uuid.uuid4().hex
    started = time.time()
    client_ip = request.headers.get("X-Forwarded-For", request.remote_addr)
    area, script_path = resolve(subpath)
    status = 200
    try:
        if ALLOWED_IP_SET and client_ip not in ALLOWED_IP_SET:
            status = 403
            return make_response("Forbidden (IP not allowed)", 403)
        if area == "api" and API_KEY and request.headers.get("X-API-Key") != API_KEY:
            status = 403
            return make_response("Forbidden (invalid API key)", 403)
        if (
            area == "admin"
            and ADMIN_API_KEY
            and request.headers.get("X-Admin-Key") != ADMIN_API_KEY
        ):
            status = 403
            return make_response("Forbidden (invalid Admin key)", 403)
        if not script_path.endswith(".py") or not os.path.isfile(script_path):
            status = 404
            return make_response("Not Found", 404)
        result = run_script(script_path)
        response = jsonify(result) if isinstance(result, dict | list) else make_response(result)
        status = response.status_code
        response.headers["X-Trace-Id"] = trace_id
        return response
    except Exception:
        status = 500
        METRICS["errors_total"] += 1
        logger.exception("script error trace_id=%s path=%s", trace_id, request.path)
        return make_response(jsonify(error="internal error", trace_id=trace_id), 500)
    finally:
        METRICS["requests_total"] += 1
        METRICS["by_area"][area] += 1
        logger.info(
            "trace_id=%s area=%s ip=%s path=%s query=%s status=%s duration_ms=%.2f",
            trace_id,
            area,
            client_ip,
            request.path,
            request.query_string.decode(),
            status,
            (time.time() - started) * 1000,
        )
