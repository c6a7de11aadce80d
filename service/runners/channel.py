"""A runner's end of its socket, and what travels on it besides calls and answers: the
script's output lines (fds 1 and 2), its log records, `secret()` and `progress()`.
"""

from __future__ import annotations

import io
import logging
import os
import select
import socket
import sys
import threading
import traceback
from typing import Any

from service.runners import protocol

MAX_LINE_CHARS = 64 * 1024
_STANDARD_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class Channel:
    """The runner's end of its socket: sends from any thread, one reader (the main loop,
    or a script's `secret()` call while the main loop runs the script)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.Reader(sock)
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any], body: bytes | None = None) -> None:
        data = protocol.encode(message)
        if body is not None:
            data += protocol.encode_bytes(body)
        with self.lock:
            self.sock.sendall(data)

    def send_bytes(self, chunk: bytes) -> None:
        with self.lock:
            self.sock.sendall(protocol.encode_bytes(chunk))

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.sock.sendall(protocol.encode(message))
            reply = self.reader.message()
        if not isinstance(reply, dict):
            raise protocol.ProtocolError("expected a message")
        return reply


class Output:
    """Descriptors 1 and 2 are pipes read here: `print`, `os.write(1, ...)` and child
    processes' output all become log lines of the call being served."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.pending = {"stdout": b"", "stderr": b""}
        # The call's output budget: past it lines are counted, not sent (the worker
        # enforces the budget too; this spares the socket a flood it would drop).
        self.left = 1 << 62
        self.dropped = 0
        self.fds: dict[int, str] = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_blocking(read_end, False)
            self.fds[read_end] = name
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
        threading.Thread(target=self._loop, name="scriptgate-output", daemon=True).start()

    def _loop(self) -> None:
        fds = list(self.fds)
        while True:
            ready, _, _ = select.select(fds, [], [])
            with self.lock:
                for fd in ready:
                    self._read(fd)

    def _read(self, fd: int) -> None:
        name = self.fds[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            *lines, rest = (self.pending[name] + data).split(b"\n")
            for line in lines:
                self._emit(name, line)
            self.pending[name] = rest[: MAX_LINE_CHARS + 1]

    def start(self, budget: int) -> None:
        with self.lock:
            self.left, self.dropped = budget, 0

    def catch_up(self) -> None:
        """Send the whole lines already written, before a message the script sends now
        (a log record, a progress): `print("a"); log.info("b")` reads a, then b."""
        with self.lock:
            for fd in self.fds:
                self._read(fd)

    def _emit(self, name: str, line: bytes) -> None:
        if len(line) > self.left:
            self.left = 0
            self.dropped += len(line)
            return
        self.left -= len(line)
        text = line.decode("utf-8", "replace")
        message: dict[str, Any] = {"t": "output", "stream": name, "message": text}
        if len(text) > MAX_LINE_CHARS:
            message.update(message=text[:MAX_LINE_CHARS], truncated=True)
        self.channel.send(message)

    def drain(self) -> None:
        """At the end of a call: what it wrote so far, a last unended line included."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: S112 - a script may have closed or replaced it
                continue
        with self.lock:
            for fd, name in self.fds.items():
                self._read(fd)
                if self.pending[name]:
                    self._emit(name, self.pending[name])
                    self.pending[name] = b""
            if self.dropped:
                self.channel.send({"t": "dropped", "bytes": self.dropped})
                self.dropped = 0


class ForwardRecords(logging.Handler):
    """On the root logger: every record the script makes goes to the worker, which writes
    it as a line of the call (the script cannot set the call's fields)."""

    def __init__(self, channel: Channel, output: Output | None = None) -> None:
        super().__init__()
        self.channel = channel
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.output is not None:
                self.output.catch_up()
            extra = {
                k: v
                for k, v in vars(record).items()
                if k not in _STANDARD_RECORD_FIELDS and isinstance(v, str | int | float | bool)
            }
            exc = None
            if record.exc_info and record.exc_info[1] is not None:
                exc = "".join(traceback.format_exception(*record.exc_info))
            self.channel.send(
                {
                    "t": "log",
                    "level": record.levelno,
                    "logger": record.name,
                    "message": record.getMessage(),
                    "exc": exc,
                    "extra": extra,
                }
            )
        except Exception:
            self.handleError(record)


class RemoteSecrets:
    """`secret(name)` in a runner: the worker reads the file (this zone's or a shared one)
    and answers; the runner user cannot read the secrets folder itself."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def read(self, name: str) -> str:
        from service.scripts.secrets import SecretNotFound

        reply = self.channel.ask({"t": "secret", "name": name})
        if "value" in reply:
            return str(reply["value"])
        if reply.get("invalid"):
            raise ValueError(reply.get("error", "not a secret's file name"))
        raise SecretNotFound(reply.get("error", f"no secret {name!r}"))


class Extension:
    """What `scriptgate.progress` and `scriptgate.secret` find on a runner's Flask app."""

    def __init__(
        self, secrets: RemoteSecrets, channel: Channel, output: Output | None = None
    ) -> None:
        self.secrets = secrets
        self.channel = channel
        self.output = output

    def progress(self, fraction: float, message: str) -> None:
        """scriptgate.progress in a runner: one message, no answer to wait for (a job's
        worker records it; a call's ignores it)."""
        if self.output is not None:
            self.output.catch_up()
        self.channel.send({"t": "progress", "fraction": fraction, "message": message})
