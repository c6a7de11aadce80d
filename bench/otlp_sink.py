"""A local OTLP/HTTP traces endpoint for the export-mode contenders: it decodes each
batch as a collector would, counts the spans per service, and answers 200.

It runs in the harness's own process, never in a measured one, so decoding costs the
contenders nothing; the count proves that every span was really sent.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

REPLY = ExportTraceServiceResponse().SerializeToString()


class Sink:
    def __init__(self) -> None:
        self.spans: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                batch = ExportTraceServiceRequest()
                batch.ParseFromString(body)
                sink.add(batch)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(REPLY)))
                self.end_headers()
                self.wfile.write(REPLY)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def add(self, batch: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in batch.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    self.spans[service] += len(scope.spans)

    def count(self, service: str) -> int:
        with self.lock:
            return self.spans[service]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@contextlib.contextmanager
def running() -> Iterator[Sink]:
    sink = Sink()
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        thread.join(5)
