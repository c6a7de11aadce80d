"""JSON log lines on stdout and in LOG_FILE, one write per record.

Several gunicorn workers append to the same file. Each record is written with a single
`os.write` on a descriptor opened with O_APPEND, so the kernel places every record
whole at the end of the file and two records never share a line, however long a stack
trace is. (logging.FileHandler goes through a buffered stream that splits long
records into several writes.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

SENSITIVE_WORDS = ("key", "token", "secret", "password", "auth")
REDACTED = "***"
LOGGER_NAME = "scriptgate"


class AppendHandler(logging.Handler):
    """Format each record once and write it, plus newline, to every descriptor in one call."""

    def __init__(
        self, fds: list[int], owned: list[int], scrub: Callable[[str], str] | None = None
    ) -> None:
        super().__init__()
        self.fds = fds
        self.owned = owned
        self.scrub = scrub  # blanks out known secret values (script_secrets.Secrets)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:
            self.handleError(record)

    def write(self, line: str) -> None:
        if self.scrub is not None:
            line = self.scrub(line)
        data = (line + "\n").encode("utf-8", "backslashreplace")
        for fd in self.fds:
            written = os.write(fd, data)
            while written < len(data):  # only on a pipe or a full disk; never on a file
                written += os.write(fd, data[written:])

    def close(self) -> None:
        for fd in self.owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        super().close()


def open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


# A million-frame RecursionError would take minutes to format; the last frames tell the story.
TRACEBACK_FRAMES = 64


def format_failure(exc: BaseException) -> str:
    """The traceback, its last TRACEBACK_FRAMES frames only, chained causes included;
    for a failure in a runner, the traceback the runner sent."""
    remote = getattr(exc, "remote_traceback", "")
    if remote:
        return str(remote).rstrip("\n")
    return "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)).rstrip("\n")


_second: tuple[int, str] = (-1, "")


def utc_stamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds (`2026-12-06T01:02:03.456Z`): unambiguous for
    Loki and across hosts. What `datetime.fromtimestamp(created, timezone.utc)
    .isoformat(timespec="milliseconds")` writes (the same rounding to microseconds), with
    the part up to the second formatted once a second."""
    global _second
    fraction, whole_float = math.modf(created)
    micro = round(fraction * 1e6)
    whole = int(whole_float)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    second, prefix = _second  # one tuple, so another thread never sees half of it
    if second != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, prefix)
    return f"{prefix}.{micro // 1000:03d}Z"


class _Formatter(JsonFormatter):
    def formatException(self, ei: Any) -> str:
        return format_failure(ei[1]) if ei and ei[1] is not None else ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_stamp(record.created)

    def line(self, logger: str, level: str, message: str, fields: Mapping[str, Any]) -> str:
        """The line `format` writes for a record with these `extra` fields, built
        without a LogRecord (see `log_fields`)."""
        stamp = utc_stamp(time.time())
        data = {"time": stamp, "level": level, "logger": logger, "message": message}
        data.update(fields)
        return self.serialize_log_record(self.process_log_record(data))


def json_formatter() -> JsonFormatter:
    return _Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def build_logger(
    level: str,
    log_file: Path | None,
    stdout: bool = True,
    scrub: Callable[[str], str] | None = None,
) -> logging.Logger:
    """A logger private to one app, so two apps in one test process never share handlers."""
    logger = logging.Logger(LOGGER_NAME, level)
    logger.propagate = False
    fds: list[int] = [sys.stdout.fileno()] if stdout else []
    owned = [open_append(log_file)] if log_file is not None else []
    if fds or owned:
        handler = AppendHandler(fds + owned, owned, scrub)
        handler.setFormatter(json_formatter())
        logger.addHandler(handler)
    return logger


def log_fields(logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> None:
    """`logger.info(message, extra=fields)` for a logger of `build_logger`, at a third of
    the cost: the request line is written for every call, and a LogRecord (the caller's
    frame, thread and process names) plus python-json-logger's search of the record for
    extra fields cost more than the rest of the line. Same JSON, same single write."""
    handlers = logger.handlers
    handler = handlers[0] if len(handlers) == 1 else None
    if not isinstance(handler, AppendHandler) or not isinstance(handler.formatter, _Formatter):
        logger.info(message, extra=dict(fields))  # a logger set up some other way
        return
    if not logger.isEnabledFor(logging.INFO):
        return
    line = handler.formatter.line(logger.name, "INFO", message, fields)
    try:
        handler.write(line)
    except Exception:  # reported as logging reports a failed emit
        handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None))


def is_sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_WORDS)


def redact_query(args: Mapping[str, list[str]]) -> dict[str, Any]:
    """Query parameters for the log: one value as a string, several as a list, secrets masked."""
    redacted: dict[str, Any] = {}
    for name, values in args.items():
        if is_sensitive(name):
            redacted[name] = REDACTED
        else:
            redacted[name] = values[0] if len(values) == 1 else list(values)
    return redacted
