"""A script's own log records and `print` output, as JSON lines of the request they serve.

    log = logging.getLogger(__name__)      # in a script
    log.info("sent %d mails", n)           # -> {"level": "INFO", "trace_id": ..., "zone": ...}

The pipeline marks the request a script serves (`serving`) in a context variable; the
runner thread that runs the script's code gets a copy of it (deadline.py), so the one
handler on the root logger knows, for any record made there, which request it belongs to
and which app's log (stdout and LOG_FILE, one write per line) it goes to. Scripts' loggers
(`scriptgate_script.*`, their module names) log at LOG_LEVEL; the root logger keeps
Python's WARNING. Records made outside any request go where Python would send them
without this handler (stderr, WARNING and above).

`print` and `sys.stderr` writes from a script become records of logger `print` at INFO
and WARNING (`install_print_capture`, done in each gunicorn worker); each line is one
record, cut at MAX_LINE_CHARS.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from opentelemetry import trace

from service.tracing import span_ids

if TYPE_CHECKING:
    from service.record import RequestContext

SCRIPT_LOGGER = "scriptgate_script"  # parent of every script module's logger
PRINT_LOGGER = "print"
MAX_LINE_CHARS = 64 * 1024


class ScriptCall:
    """The request a script's code is serving, and the app log its records go to."""

    __slots__ = ("ctx", "log", "pending")

    def __init__(self, log: logging.Logger, ctx: RequestContext) -> None:
        self.log = log
        self.ctx = ctx
        self.pending: dict[str, str] = {}  # a printed line not yet ended, per stream

    def fields(self) -> dict[str, Any]:
        """What every record of the call carries; the span is the script's own when the
        record is made inside it (script.run), else the request's server span."""
        ctx = self.ctx
        trace_id, span_id = ctx.trace_id, ctx.span_id
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            trace_id, span_id = span_ids(span)
        return {"trace_id": trace_id, "span_id": span_id, "zone": ctx.zone, "script": ctx.script}


_current: contextvars.ContextVar[ScriptCall | None] = contextvars.ContextVar(
    "scriptgate_script_call", default=None
)
# Set while a captured line is being logged: a logging error that prints to stderr must
# reach the real stream, not come back here.
_emitting: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "scriptgate_emitting", default=False
)


@contextmanager
def serving(log: logging.Logger, ctx: RequestContext) -> Iterator[None]:
    """Mark the request whose script code runs inside this block (and its runner copies)."""
    call = ScriptCall(log, ctx)
    token = _current.set(call)
    try:
        yield
    finally:
        for stream, text in call.pending.items():  # a last line printed without "\n"
            _emit_line(call, stream, text)
        _current.reset(token)


class RequestLogHandler(logging.Handler):
    """On the root logger: a record made while a script serves a request goes to that
    request's app log, with its fields; any other record as if this handler did not exist."""

    def emit(self, record: logging.LogRecord) -> None:
        call = _current.get()
        if call is None:
            if record.levelno >= logging.lastResort.level:  # type: ignore[union-attr]
                logging.lastResort.handle(record)  # type: ignore[union-attr]
            return
        if record.levelno < call.log.getEffectiveLevel():
            return
        for name, value in call.fields().items():
            if not hasattr(record, name):  # a script's own extra= wins
                setattr(record, name, value)
        call.log.handle(record)


def install(level: str) -> None:
    """Route script records to the app logs (idempotent: one handler per process)."""
    logging.getLogger(SCRIPT_LOGGER).setLevel(level)
    logging.getLogger(PRINT_LOGGER).setLevel(logging.DEBUG)  # LOG_LEVEL decides, per app
    root = logging.getLogger()
    if not any(isinstance(h, RequestLogHandler) for h in root.handlers):
        root.addHandler(RequestLogHandler())


class CapturedStream:
    """sys.stdout / sys.stderr: a script's lines become log records, the rest passes."""

    def __init__(self, stream: TextIO, name: str, level: int) -> None:
        self.stream = stream
        self.name = name
        self.level = level

    def write(self, text: str) -> int:
        call = _current.get()
        if call is None or _emitting.get():
            return self.stream.write(text)
        *lines, rest = (call.pending.pop(self.name, "") + text).split("\n")
        for line in lines:
            _emit_line(call, self.name, line, self.level)
        if rest:
            call.pending[self.name] = rest[: MAX_LINE_CHARS + 1]
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer...
        return getattr(self.stream, name)


def install_print_capture() -> None:
    """Capture this process's print output (a gunicorn worker's, after fork)."""
    if not isinstance(sys.stdout, CapturedStream):
        sys.stdout = CapturedStream(sys.stdout, "stdout", logging.INFO)  # type: ignore[assignment]
    if not isinstance(sys.stderr, CapturedStream):
        sys.stderr = CapturedStream(sys.stderr, "stderr", logging.WARNING)  # type: ignore[assignment]


def _emit_line(call: ScriptCall, stream: str, line: str, level: int | None = None) -> None:
    if level is None:
        level = logging.WARNING if stream == "stderr" else logging.INFO
    extra: dict[str, Any] = {"stream": stream}
    if len(line) > MAX_LINE_CHARS:
        extra["truncated"] = True
        line = line[:MAX_LINE_CHARS]
    token = _emitting.set(True)
    try:
        logging.getLogger(PRINT_LOGGER).log(level, "%s", line, extra=extra)
    finally:
        _emitting.reset(token)
