"""What the pipeline learns about one request, handed from stage to stage and, at the
end, to the record (observability/record.py)."""

from __future__ import annotations

import time

from opentelemetry.trace import Span

from service.access.keys import ANONYMOUS, Caller
from service.observability.tracing import span_ids
from service.scripts.resolve import UNMATCHED


class RequestContext:
    """What the pipeline learns about one request, handed from stage to stage."""

    __slots__ = (
        "caller",
        "client_ip",
        "denied_reason",
        "rejected_reason",
        "script",
        "server_span",
        "span_id",
        "started",
        "trace_id",
        "zone",
    )

    def __init__(self, zone: str, client_ip: str, server_span: Span) -> None:
        self.started = time.perf_counter()
        self.zone = zone
        self.script = UNMATCHED
        self.client_ip = client_ip
        self.server_span = server_span
        self.trace_id, self.span_id = span_ids(server_span)
        self.denied_reason: str | None = None  # an AccessDenied reason
        self.rejected_reason: str | None = None  # a TooManyRequests reason
        self.caller: Caller = ANONYMOUS  # the key that made the call (access.authorize)
