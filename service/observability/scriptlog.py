"""A script's own log records and output, as JSON lines of the call they belong to.

    log = logging.getLogger(__name__)      # in a script
    log.info("sent %d mails", n)           # -> {"level": "INFO", "trace_id": ..., "zone": ...}

A script runs in its runner (service/runners): its `logging` records and everything
written to its descriptors 1 and 2 (`print`, `os.write`, child processes) come to the
worker as messages, and are written here. The fields that say whose line it is
(`logger` outside the script's own namespace, `trace_id`, `span_id`, `zone`, `script`,
`caller`, `job_id`) are set here and a script cannot set them: a record's `extra` may add
fields, never replace these. Output lines are records of logger `print`, stdout at INFO and
stderr at WARNING. A call writes at most SCRIPT_OUTPUT_LIMIT bytes of lines; the rest is
dropped and one WARNING line says how much.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from service.observability.tracing import span_ids

if TYPE_CHECKING:
    from service.http.context import RequestContext

SCRIPT_LOGGER = "scriptgate_script"  # parent of every script module's logger
PRINT_LOGGER = "print"
PLATFORM_FIELDS = frozenset(
    {"logger", "trace_id", "span_id", "zone", "script", "caller", "job_id", "time", "level"}
    | {"message", "exc_info", "stream", "truncated"}
)
_LEVELS = frozenset({logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL})


class ScriptLines:
    """Writes one call's lines to the app log, within the call's output budget."""

    __slots__ = ("ctx", "dropped", "extra", "left", "log")

    def __init__(
        self, log: logging.Logger, ctx: RequestContext, budget: int, extra: dict | None = None
    ) -> None:
        self.log = log
        self.ctx = ctx
        self.left = budget
        self.dropped = 0
        self.extra = extra or {}

    def fields(self) -> dict[str, Any]:
        """The call's fields; the span is the script's own (script.run) when there is one."""
        ctx = self.ctx
        trace_id, span_id = ctx.trace_id, ctx.span_id
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            trace_id, span_id = span_ids(span)
        fields = {"trace_id": trace_id, "span_id": span_id, "zone": ctx.zone, "script": ctx.script}
        if ctx.caller is not None:
            fields["caller"] = ctx.caller.id
        fields.update(self.extra)
        return fields

    def write(self, message: dict[str, Any]) -> None:
        """A runner's `log`, `output` or `dropped` message."""
        if message.get("t") == "dropped":  # what the runner kept back, over the budget
            bytes_ = message.get("bytes")
            self.dropped += bytes_ if isinstance(bytes_, int) and bytes_ > 0 else 0
            return
        text = str(message.get("message", ""))
        exc = message.get("exc")
        size = len(text) + (len(exc) if isinstance(exc, str) else 0)
        if size > self.left:
            self.left = 0
            self.dropped += size
            return
        self.left -= size
        if message.get("t") == "output":
            stream = "stderr" if message.get("stream") == "stderr" else "stdout"
            level = logging.WARNING if stream == "stderr" else logging.INFO
            own: dict[str, Any] = {"stream": stream}
            if message.get("truncated"):
                own["truncated"] = True
            self._emit(PRINT_LOGGER, level, text, None, own)
            return
        level = message.get("level")
        level = level if level in _LEVELS else logging.WARNING
        extra = message.get("extra")
        own = {
            k: v
            for k, v in (extra.items() if isinstance(extra, dict) else ())
            if isinstance(k, str) and k not in PLATFORM_FIELDS and not k.startswith("_")
        }
        self._emit(script_logger(message.get("logger")), level, text, exc, own)

    def close(self) -> None:
        if self.dropped:
            self._emit(
                PRINT_LOGGER,
                logging.WARNING,
                f"output cut: {self.dropped} more bytes over SCRIPT_OUTPUT_LIMIT",
                None,
                {"truncated": True},
            )
            self.dropped = 0

    def _emit(self, name: str, level: int, text: str, exc: Any, own: dict[str, Any]) -> None:
        if level < self.log.getEffectiveLevel():
            return
        record = logging.LogRecord(name, level, "", 0, text, None, None)
        if isinstance(exc, str) and exc:
            record.exc_text = exc.rstrip("\n")
        for key, value in own.items():
            setattr(record, key, value)
        for key, value in self.fields().items():
            setattr(record, key, value)
        self.log.handle(record)


def script_logger(name: Any) -> str:
    """A record's logger as written: the script's own namespace, never a platform name."""
    name = str(name or "root")
    if name == SCRIPT_LOGGER or name.startswith(SCRIPT_LOGGER + "."):
        return name
    return f"{SCRIPT_LOGGER}.{name}"
