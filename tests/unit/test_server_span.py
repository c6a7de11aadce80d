"""The server span is the one opentelemetry-instrumentation-flask records, attribute for
attribute, although Scriptgate installs only its hooks (service/observability/tracing.py).
These tests compare it with the span the stock `instrument_app` records for the same request, so an
instrumentation release that moves what the hooks do fails here, not in production."""

from __future__ import annotations

import pytest
from flask import Flask, abort
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.unit.conftest import API, write_scripts

# What differs by design: the stock app routes with a URL rule, Scriptgate has none and
# names the span after the script's own URL.
ROUTE_DEPENDENT = {"http.route"}
HEADERS = {
    **API,
    "User-Agent": "curl/8.5.0",
    "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
}
CASES = [
    ("/api/hello.py?name=Rico", 200),
    ("/api/boom.py", 500),
    ("/api/missing.py", 404),
]


def _stock_span(path: str, status: int) -> object:
    """The server span of a plain Flask app instrumented the documented way."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stock = Flask("stock")

    @stock.route("/api/<path:script>")
    def answer(script: str) -> dict:
        if status != 200:
            abort(status)
        return {"message": "Hello, Rico!"}

    FlaskInstrumentor().instrument_app(stock, tracer_provider=provider)
    stock.test_client().get(path, headers=HEADERS, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    return span


@pytest.fixture
def recorded(make_app, scripts_dir, monkeypatch):
    write_scripts(scripts_dir, {"api/boom.py": "def main(request):\n    raise KeyError('x')\n"})
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    app = make_app()
    exporter = InMemorySpanExporter()
    app.extensions["scriptgate"].tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return app, exporter


@pytest.mark.parametrize(("path", "status"), CASES)
def test_server_span_keeps_every_attribute_of_the_stock_instrumentation(recorded, path, status):
    app, exporter = recorded
    response = app.test_client().get(
        path, headers=HEADERS, environ_base={"REMOTE_ADDR": "127.0.0.1"}
    )
    assert response.status_code == status
    (ours,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    stock = _stock_span(path, status)
    expected = {k: v for k, v in stock.attributes.items() if k not in ROUTE_DEPENDENT}
    assert {k: ours.attributes.get(k) for k in expected} == expected
    assert ours.status.status_code == stock.status.status_code
    assert ours.instrumentation_scope.name == stock.instrumentation_scope.name
    assert ours.context.trace_id == stock.context.trace_id == int("ab" * 16, 16)
    assert ours.parent.span_id == int("cd" * 8, 16)  # the caller's span
    assert ours.start_time < ours.end_time


def test_server_span_starts_before_its_children(recorded):
    app, exporter = recorded
    app.test_client().get("/api/hello.py", headers=API)
    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    children = [s for s in spans if s.parent and s.parent.span_id == server.context.span_id]
    assert {c.name for c in children} == {"script.import", "script.run"}
    assert all(
        server.start_time <= c.start_time and c.end_time <= server.end_time for c in children
    )


def test_excluded_urls_setting_is_honoured(make_app, monkeypatch):
    """OTEL_PYTHON_FLASK_EXCLUDED_URLS needs the stock instrumentation: it is used then."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "_platform/health")
    app = make_app()
    exporter = InMemorySpanExporter()
    app.extensions["scriptgate"].tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = app.test_client()
    assert client.get("/_platform/health").status_code == 200
    assert [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER] == []
    response = client.get("/api/hello.py", headers=API)
    (server,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert format(server.context.trace_id, "032x") == response.headers["X-Trace-Id"]
    assert server.attributes["http.status_code"] == 200
