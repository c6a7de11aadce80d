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
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

SENSITIVE_WORDS = ("key", "token", "secret", "password", "auth")
REDACTED = "***"
LOGGER_NAME = "scriptgate"


class AppendHandler(logging.Handler):
    """Write each formatted record plus newline to a descriptor in one system call."""

    def __init__(self, fd: int, *, owns_fd: bool) -> None:
        super().__init__()
        self.fd = fd
        self.owns_fd = owns_fd

    @classmethod
    def for_file(cls, path: Path) -> AppendHandler:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return cls(fd, owns_fd=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            written = os.write(self.fd, data)
            while written < len(data):  # only on a pipe or a full disk; never on a file
                written += os.write(self.fd, data[written:])
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.owns_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        super().close()


class _Formatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ISO 8601 in UTC with milliseconds: unambiguous for Loki and across hosts.
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_formatter() -> JsonFormatter:
    return _Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def build_logger(level: str, log_file: Path | None, stdout: bool = True) -> logging.Logger:
    """A logger private to one app, so two apps in one test process never share handlers."""
    logger = logging.Logger(LOGGER_NAME, level)
    logger.propagate = False
    formatter = json_formatter()
    handlers: list[logging.Handler] = []
    if stdout:
        handlers.append(AppendHandler(sys.stdout.fileno(), owns_fd=False))
    if log_file is not None:
        handlers.append(AppendHandler.for_file(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


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
