"""Spans reach a real OTLP/HTTP receiver, decoded from protobuf as a collector would."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.servers import free_port, gunicorn, wait_until


class Receiver:
    """A tiny OTLP/HTTP traces endpoint: POST /v1/traces, protobuf body."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.resources: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(self.path, request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, path: str, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                self.resources.append(resource)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "path": path,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "attributes": {
                                    a.key: a.value.string_value for a in span.attributes
                                },
                                "status": span.status.code,
                                "service": resource.get("service.name"),
                                "seconds": (span.end_time_unix_nano - span.start_time_unix_nano)
                                / 1e9,
                                "end": span.end_time_unix_nano,
                            }
                        )

    def for_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver():
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def test_spans_of_a_request_reach_the_otlp_receiver(receiver, tmp_path: Path):
    scripts = tmp_path / "scripts"
    (scripts / "api").mkdir(parents=True)
    env = {
        "API_KEY": "otlp-key",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        # Each written just before its request: the request must import it itself (the
        # script.import span), so no scanner pass may describe it first. A pass that
        # starts in between cannot finish a runner's import in that millisecond; one that
        # started during the first request could have finished bad.py's (a CI flake).
        (scripts / "api" / "hello.py").write_text("def main(request):\n    return {'ok': True}\n")
        ok = server.get("/api/hello.py", headers={"X-API-Key": "otlp-key"})
        (scripts / "bad.py").write_text("def main(request):\n    raise ValueError('x')\n")
        bad = server.get("/bad.py")
        assert (ok.status_code, bad.status_code) == (200, 500)
        spans = wait_until(
            lambda: (
                len(receiver.for_trace(ok.headers["X-Trace-Id"])) >= 3
                and receiver.for_trace(ok.headers["X-Trace-Id"])
            ),
            timeout=20,
            what="the request's spans at the OTLP receiver",
        )
        failed = wait_until(
            lambda: (
                len(receiver.for_trace(bad.headers["X-Trace-Id"])) >= 3
                and receiver.for_trace(bad.headers["X-Trace-Id"])
            ),
            timeout=20,
            what="the failed request's spans",
        )
    assert {s["path"] for s in spans} == {"/v1/traces"}
    by_name = {s["name"]: s for s in spans}
    server_span = next(s for s in spans if s["kind"] == 2)  # SPAN_KIND_SERVER
    assert server_span["attributes"]["scriptgate.zone"] == "api"
    assert server_span["attributes"]["scriptgate.script"] == "hello.py"
    assert server_span["service"] == "scriptgate"
    assert by_name["script.import"]["parent"] == server_span["span_id"]
    assert by_name["script.run"]["parent"] == server_span["span_id"]
    errored = {s["name"] for s in failed if s["status"] == 2}  # STATUS_CODE_ERROR
    assert "script.run" in errored
    assert any(s["kind"] == 2 for s in failed if s["status"] == 2)  # the server span too


def test_otel_service_name_is_honoured(receiver, tmp_path: Path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hello.py").write_text("def main(request):\n    return 'hi'\n")
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces",
        "OTEL_SERVICE_NAME": "reports-gateway",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        trace_id = server.get("/hello.py").headers["X-Trace-Id"]
        spans = wait_until(lambda: receiver.for_trace(trace_id), timeout=20, what="spans")
    assert {s["service"] for s in spans} == {"reports-gateway"}
