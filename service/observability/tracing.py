"""Tracer provider, exporter choice and the trace headers on every response.

Built inside each gunicorn worker (create_app runs after fork), so the batch exporter's
background thread lives in the process that records the spans.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from time import time_ns
from typing import Any

from flask import Flask, Response
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation import flask as otel_flask
from opentelemetry.instrumentation import wsgi as otel_wsgi
from opentelemetry.instrumentation._semconv import (
    _get_schema_url,
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
)
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


def instrument(
    app: Flask, provider: TracerProvider, environ: Mapping[str, str] | None = None
) -> trace.Tracer:
    """Open the server span of opentelemetry-instrumentation-flask around every request;
    must run before other before_request hooks.

    The span comes from the instrumentation's own before_request and teardown hooks,
    installed as `FlaskInstrumentor.instrument_app` installs them. Its WSGI wrapper is
    left out: it collects every request attribute a second time for HTTP metrics that
    Prometheus already counts here, and it and both hooks rebuild `request.url` to test
    an exclusion list that is empty; no option turns that off. `ServerSpan` does the two
    things of the wrapper a span shows: the start time and the response status. With
    OTEL_PYTHON_FLASK_EXCLUDED_URLS set, or an instrumentation whose private hooks have
    moved (pyproject.toml pins the version; tests/unit/test_server_span.py compares the
    span with the stock one), the stock `instrument_app` is used instead.
    """
    env = os.environ if environ is None else environ
    excluded = next((env[name] for name in _EXCLUDED_URLS_VARS if env.get(name)), None)
    if excluded is not None or not _hooks_available():
        FlaskInstrumentor().instrument_app(
            app,
            tracer_provider=provider,
            excluded_urls=excluded,
            meter_provider=NoOpMeterProvider(),  # Prometheus already counts requests
            enable_commenter=False,  # no ORM here to read a SQL comment
        )
        return provider.get_tracer(TRACER_NAME)
    _OpenTelemetrySemanticConventionStability._initialize()
    mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
        _OpenTelemetryStabilitySignalType.HTTP
    )
    tracer = trace.get_tracer(
        otel_flask.__name__, otel_flask.__version__, provider, schema_url=_get_schema_url(mode)
    )
    app.before_request(
        otel_flask._wrapped_before_request(
            tracer=tracer, enable_commenter=False, commenter_options={}, sem_conv_opt_in_mode=mode
        )
    )
    app.teardown_request(otel_flask._wrapped_teardown_request())
    app.wsgi_app = ServerSpan(app.wsgi_app, mode)  # type: ignore[method-assign]
    app._is_instrumented_by_opentelemetry = True  # type: ignore[attr-defined]
    return provider.get_tracer(TRACER_NAME)


# What opentelemetry.util.http.get_excluded_urls("FLASK") reads.
_EXCLUDED_URLS_VARS = ("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
_PRIVATE_HOOKS = (
    "_wrapped_before_request",
    "_wrapped_teardown_request",
    "_ENVIRON_STARTTIME_KEY",
    "_ENVIRON_SPAN_KEY",
)


def _hooks_available() -> bool:
    return all(hasattr(otel_flask, name) for name in _PRIVATE_HOOKS)


class ServerSpan:
    """WSGI middleware: what the instrumentation's own wrapper gives the server span.

    The start time is taken before Flask routes the request, and the response status
    is set on the span (http.status_code, and ERROR for a 5xx) when the response starts,
    only if the span is recorded.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], mode: Any) -> None:
        self.app = app
        self.mode = mode

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ[otel_flask._ENVIRON_STARTTIME_KEY] = time_ns()

        def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            span = environ.get(otel_flask._ENVIRON_SPAN_KEY)
            if span is not None and span.is_recording():
                otel_wsgi.add_response_attributes(span, status, headers, None, self.mode)
                if span.kind == trace.SpanKind.SERVER:
                    custom = otel_wsgi.collect_custom_response_headers_attributes(headers)
                    if custom:
                        span.set_attributes(custom)
            return start_response(status, headers, *args)

        return self.app(environ, respond)


class _Kept:
    """Stands in for the server span's activation at teardown: the span stays open."""

    def __exit__(self, *exc: Any) -> None:
        return None


def end_server_span_later(environ: dict[str, Any]) -> Callable[[], None]:
    """For a streamed answer: the server span ends when the stream does, not when the
    view returns (the instrumentation's teardown runs then). Returns the function that
    ends it; a no-op when this request has no span of the instrumentation's."""
    key = getattr(otel_flask, "_ENVIRON_ACTIVATION_KEY", None)  # test_private_apis.py
    activation = environ.get(key) if key is not None else None
    if activation is None or not hasattr(activation, "__exit__"):
        return lambda: None
    environ[key] = _Kept()

    def end() -> None:
        current = otel_context.get_current()
        try:
            activation.__exit__(None, None, None)
        finally:
            otel_context.attach(current)  # the span's own context detached: as it was

    return end


def span_ids(span: trace.Span) -> tuple[str, str]:
    """(trace id, span id) as the logs and headers write them: lowercase hex."""
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def add_trace_headers(response: Response, span: trace.Span, ids: tuple[str, str]) -> None:
    """X-Trace-Id and a W3C traceresponse header, from the server span and its ids as
    `span_ids` wrote them."""
    context = span.get_span_context()
    if context.is_valid:
        trace_id, span_id = ids
        response.headers["X-Trace-Id"] = trace_id
        response.headers["traceresponse"] = (
            f"00-{trace_id}-{span_id}-{int(context.trace_flags):02x}"
        )
