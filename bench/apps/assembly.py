"""Contender 2, the assembly: what a team would wire by hand from the usual libraries.

Flask + prometheus_flask_exporter in multiprocess mode (PROMETHEUS_MULTIPROC_DIR must be
set by whoever starts gunicorn, before prometheus_client is imported) +
opentelemetry-instrumentation-flask with an SDK TracerProvider + one python-json-logger
record per request, written to BENCH_LOG_FILE, around the same script body Scriptgate
serves. Like Scriptgate's bench configuration it checks API_KEY (constant time) and
API_TRUSTED_IPS, and believes X-Forwarded-For from one proxy hop (werkzeug's ProxyFix).
The TracerProvider reads the standard OTEL_* variables (OTEL_TRACES_SAMPLER=always_off
samples spans out); with OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set it exports over OTLP/HTTP
through a BatchSpanProcessor, as Scriptgate does.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time

from flask import Flask, abort, g, request
from hello_body import load_main
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
from pythonjsonlogger.json import JsonFormatter
from werkzeug.middleware.proxy_fix import ProxyFix


def _request_logger(path: str) -> logging.Logger:
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("assembly.requests")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def _provider() -> TracerProvider:
    provider = TracerProvider()
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


API_KEY = os.environ.get("API_KEY", "").encode()
ALLOWED = [ipaddress.ip_network(n) for n in os.environ.get("API_TRUSTED_IPS", "").split(",") if n]

app = Flask(__name__)
provider = _provider()
FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
metrics = GunicornInternalPrometheusMetrics(app, path="/metrics")
log = _request_logger(os.environ.get("BENCH_LOG_FILE", os.devnull))
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
hello_main = load_main()


@app.before_request
def _start_timer() -> None:
    g.started = time.perf_counter()


@app.before_request
def _check_access() -> None:
    if ALLOWED and not any(ipaddress.ip_address(request.remote_addr) in n for n in ALLOWED):
        abort(403)
    if API_KEY and not hmac.compare_digest(request.headers.get("X-API-Key", "").encode(), API_KEY):
        abort(401)


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
    return hello_main(request)
