"""Contender 2, the assembly: what a team would wire by hand from the usual libraries.

Flask + prometheus_flask_exporter in multiprocess mode (PROMETHEUS_MULTIPROC_DIR must be
set by whoever starts gunicorn, before prometheus_client is imported) +
opentelemetry-instrumentation-flask with an SDK TracerProvider and no exporter + one
python-json-logger record per request, written to BENCH_LOG_FILE.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, g, request
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from pythonjsonlogger.json import JsonFormatter


def _request_logger(path: str) -> logging.Logger:
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("assembly.requests")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


app = Flask(__name__)
provider = TracerProvider()
FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
metrics = GunicornInternalPrometheusMetrics(app, path="/metrics")
log = _request_logger(os.environ.get("BENCH_LOG_FILE", os.devnull))


@app.before_request
def _start_timer() -> None:
    g.started = time.perf_counter()


@app.after_request
def _log_request(response):
    context = trace.get_current_span().get_span_context()
    log.info(
        "request",
        extra={
            "trace_id": format(context.trace_id, "032x"),
            "method": request.method,
            "path": request.path,
            "client_ip": request.remote_addr,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.started) * 1000, 3),
        },
    )
    return response


@app.route("/api/hello.py", methods=["GET", "POST"])
def hello() -> dict:
    return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
