"""Tools the hardening tests share: raw HTTP, atomic script writes, log reading, figures.

`requests` and `http.client` normalise what they send (they quote paths, refuse control
characters, fold duplicate headers); a hostile client does none of that, so requests
here are written byte for byte on a socket and only the answer is parsed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# Lines the terminal summary prints under "hardening figures" (see conftest.py).
FIGURES = pytest.StashKey[list[str]]()


class Dropped(Exception):
    """The server closed the connection without an answer (a worker died mid-request)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def from_app(self) -> bool:
        """True when the platform answered (gunicorn's own 400/414/431 have no trace id)."""
        return "x-trace-id" in self.headers

    def json(self) -> object:
        return json.loads(self.body)


def build_request(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
) -> bytes:
    """An HTTP/1.1 request exactly as given; Content-Length is added only for a body."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def send_raw(port: int, data: bytes, timeout: float = 30.0) -> Reply:
    """Write `data` to 127.0.0.1:port and parse the one response; raises Dropped."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (413, 431) before reading everything we send.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        method = data.split(b" ", 1)[0].decode("latin-1")
        response = http.client.HTTPResponse(sock, method=method)  # HEAD: no body to read
        try:
            response.begin()
            body = response.read()
        except (http.client.HTTPException, ConnectionResetError) as exc:
            # RemoteDisconnected before the status line, IncompleteRead during the body
            raise Dropped(repr(exc)) from exc
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, body)


def fetch(
    port: int,
    target: str | bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    method: bytes = b"GET",
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    raw_target = target.encode() if isinstance(target, str) else target
    return send_raw(port, build_request(method, raw_target, headers, body), timeout)


def write_script(path: Path, source: str) -> None:
    """Write a script atomically (a private temp name, then os.replace).

    A worker therefore sees the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(textwrap.dedent(source).lstrip())
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict]:
    """Every record of a JSON-lines log; fails naming the first line that is not JSON."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{number} is not JSON ({exc}): {line[:200]!r}") from None
    return records


def error_record(log_file: Path, trace_id: str) -> dict:
    """The ERROR record the platform wrote for a failed request (the first one)."""
    for record in read_log(log_file):
        if record.get("level") == "ERROR" and record.get("trace_id") == trace_id:
            return record
    raise AssertionError(f"no ERROR record with trace_id {trace_id} in {log_file}")


def request_duration(log_file: Path, trace_id: str) -> float:
    """duration_ms of the request record the platform wrote for a trace id."""
    for record in read_log(log_file):
        if record.get("message") == "request" and record.get("trace_id") == trace_id:
            return float(record["duration_ms"])
    raise AssertionError(f"no request record with trace_id {trace_id} in {log_file}")


def assert_clean_error(reply: Reply, *forbidden: str) -> None:
    """The contract's error body: JSON, the response's trace id, no trace or file path."""
    assert reply.from_app, f"answered by gunicorn, not the platform: {reply.body[:200]!r}"
    body = reply.json()
    assert isinstance(body, dict) and body.get("error"), body
    trace_id = reply.headers["x-trace-id"]
    assert TRACE_ID.match(trace_id), trace_id
    assert body.get("trace_id") == trace_id, (body, trace_id)
    text = reply.body.decode("utf-8", "replace")
    for leak in ("Traceback", 'File "', '.py", line', *forbidden):
        assert leak not in text, f"{leak!r} leaked in {text!r}"


def record_figure(config: pytest.Config, line: str) -> None:
    """Keep a line for the terminal summary and print it (visible with -s)."""
    config.stash.setdefault(FIGURES, []).append(line)
    print(line)
