"""Tracer provider, exporter choice and the trace headers on every response.

Built inside each gunicorn worker (create_app runs after fork), so the batch exporter's
background thread lives in the process that records the spans.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask, Response
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

DEFAULT_SERVICE_NAME = "scriptgate"
TRACER_NAME = "scriptgate"
_EXPORT_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def export_enabled(environ: Mapping[str, str]) -> bool:
    """OTLP/HTTP export only when an endpoint is configured and export is not turned off."""
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name) for name in _EXPORT_ENDPOINT_VARS)


def build_tracer_provider(version: str, environ: Mapping[str, str] | None = None) -> TracerProvider:
    """A provider honouring the standard OTEL_* variables (sampler, resource, exporter)."""
    env = os.environ if environ is None else environ
    attributes = {SERVICE_VERSION: version}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    exporting = export_enabled(env)
    sampler = None
    if not exporting and not env.get("OTEL_TRACES_SAMPLER"):
        # Nothing would ever read a recorded span: sample it out. The span still has real
        # ids (a caller's traceparent is still continued), so X-Trace-Id, traceresponse and
        # the log's trace_id stay true, and the attribute work is skipped.
        sampler = ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def instrument(app: Flask, provider: TracerProvider) -> trace.Tracer:
    """Wrap the app in the Flask server span; must run before other before_request hooks."""
    # Its HTTP metrics would go to OpenTelemetry's meter; Prometheus already counts every
    # request, so they are switched off rather than computed for nobody.
    FlaskInstrumentor().instrument_app(
        app, tracer_provider=provider, meter_provider=NoOpMeterProvider()
    )
    return provider.get_tracer(TRACER_NAME)


def span_ids(span: trace.Span) -> tuple[str, str]:
    """(trace id, span id) as the logs and headers write them: lowercase hex."""
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def add_trace_headers(response: Response, span: trace.Span) -> None:
    """X-Trace-Id and a W3C traceresponse header, from the server span."""
    context = span.get_span_context()
    if context.is_valid:
        trace_id, span_id = span_ids(span)
        response.headers["X-Trace-Id"] = trace_id
        response.headers["traceresponse"] = (
            f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"
        )
