"""Trace headers, spans, the request log record and redaction."""

from __future__ import annotations

import re

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.unit.conftest import API, API_KEY, log_records, write_scripts

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def record_spans(app) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    app.extensions["scriptgate"].tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def traced(make_app, monkeypatch):
    """An app whose spans are recorded, as when an exporter is configured."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    app = make_app()
    return app, record_spans(app)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/hello.py", 200),
        ("/api/hello.py", 401),
        ("/nope.py", 404),
        ("/_platform/health", 200),
        ("/_platform/routes", 200),
        ("/_platform/metrics", 200),
        ("/_platform/other", 404),
    ],
)
def test_every_response_has_trace_headers(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    trace_id = response.headers["X-Trace-Id"]
    assert HEX32.match(trace_id)
    version, tid, span_id, flags = response.headers["traceresponse"].split("-")
    assert (version, tid) == ("00", trace_id)
    assert re.match(r"^[0-9a-f]{16}$", span_id) and re.match(r"^[0-9a-f]{2}$", flags)
    if response.is_json and status >= 400:
        assert response.get_json()["trace_id"] == trace_id


def test_traceparent_continues_the_callers_trace(client):
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = client.get("/hello.py", headers={"traceparent": f"00-{caller}-00f067aa0ba902b7-01"})
    assert response.headers["X-Trace-Id"] == caller


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", "00-xyz-00f067aa0ba902b7-01", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"],
)
def test_malformed_traceparent_starts_a_new_trace(client, traceparent):
    response = client.get("/hello.py", headers={"traceparent": traceparent})
    assert response.status_code == 200
    assert HEX32.match(response.headers["X-Trace-Id"])
    assert response.headers["X-Trace-Id"] != "0" * 32


def test_server_span_with_import_and_run_children(traced):
    app, spans = traced
    client = app.test_client()
    response = client.get("/api/hello.py", headers=API)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) >= {"script.import", "script.run"}
    server = next(s for s in by_name.values() if s.kind.name == "SERVER")
    assert server.attributes["scriptgate.zone"] == "api"
    assert server.attributes["scriptgate.script"] == "hello.py"
    assert format(server.context.trace_id, "032x") == response.headers["X-Trace-Id"]
    for child in ("script.import", "script.run"):
        assert by_name[child].parent.span_id == server.context.span_id
    # A second call uses the cached module: no import span.
    spans.clear()
    client.get("/api/hello.py", headers=API)
    assert "script.import" not in {s.name for s in spans.get_finished_spans()}


def test_script_exception_is_recorded_on_spans(make_app, scripts_dir, monkeypatch):
    write_scripts(scripts_dir, {"bad.py": "def main(request):\n    raise KeyError('x')\n"})
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    app = make_app()
    exporter = record_spans(app)
    app.test_client().get("/bad.py")
    checked = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "script.run" or s.kind.name == "SERVER"
    ]
    assert len(checked) == 2
    for span in checked:
        assert span.status.status_code == StatusCode.ERROR
        event = next(e for e in span.events if e.name == "exception")
        assert event.attributes["exception.type"] == "KeyError"
        assert "Traceback" in event.attributes["exception.stacktrace"]


def test_without_an_exporter_spans_are_sampled_out_but_ids_stay_true(app):
    exporter = record_spans(app)
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = app.test_client().get(
        "/hello.py", headers={"traceparent": f"00-{caller}-00f067aa0ba902b7-01"}
    )
    assert exporter.get_finished_spans() == ()
    assert response.headers["X-Trace-Id"] == caller
    assert int(response.headers["traceresponse"][-2:], 16) & 1 == 0  # not sampled


def test_sampled_span_says_so_in_traceresponse(traced):
    app, _ = traced
    flags = app.test_client().get("/hello.py").headers["traceresponse"][-2:]
    assert int(flags, 16) & 1 == 1  # sampled


def test_request_log_record(client, log_file):
    response = client.get("/api/hello.py?name=Rico&api_key=leak1&Token=leak2&x=1&x=2", headers=API)
    record = log_records(log_file)[-1]
    assert record["message"] == "request"
    assert record["trace_id"] == response.headers["X-Trace-Id"]
    assert re.match(r"^[0-9a-f]{16}$", record["span_id"])
    assert record["zone"] == "api"
    assert record["script"] == "hello.py"
    assert record["method"] == "GET"
    assert record["path"] == "/api/hello.py"
    assert record["query"] == {"name": "Rico", "api_key": "***", "Token": "***", "x": ["1", "2"]}
    assert record["client_ip"] == "127.0.0.1"
    assert record["status"] == 200
    assert isinstance(record["duration_ms"], float)


@pytest.mark.parametrize(
    "name", ["key", "apikey", "access_token", "client_secret", "password", "Authorization", "AUTH"]
)
def test_sensitive_query_values_are_redacted(client, log_file, name):
    client.get(f"/hello.py?{name}=s3cr3t-value")
    assert log_records(log_file)[-1]["query"][name] == "***"
    assert "s3cr3t-value" not in log_file.read_text()


def test_keys_are_never_logged(make_app, scripts_dir, log_file):
    write_scripts(scripts_dir, {"api/boom.py": "def main(request):\n    raise ValueError\n"})
    client = make_app().test_client()
    client.get("/api/hello.py", headers=API)
    client.get("/api/boom.py", headers=API)
    client.get("/api/hello.py", headers={"X-API-Key": "wrong-key-attempt"})
    text = log_file.read_text()
    assert API_KEY not in text
    assert "wrong-key-attempt" not in text


def test_denied_request_is_logged_and_counted(client, log_file):
    client.get("/api/hello.py")
    record = log_records(log_file)[-1]
    assert (record["status"], record["zone"], record["script"]) == (401, "api", "__unmatched__")
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    assert 'scriptgate_auth_denied_total{reason="api_key",zone="api"} 1.0' in metrics


def test_empty_log_file_setting_writes_no_file(make_app, log_file):
    client = make_app(log_file=None).test_client()
    client.get("/hello.py")
    assert not log_file.exists()
