"""Real server processes: free ports, readiness by polling with a deadline, always stopped.

The benchmarks and the tests both start real servers; this is the one place that knows
how. It imports nothing from tests/ (the tests import it, never the other way round).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTGATE = str(BIN / "scriptgate")
# Inherited settings that would change what a server does are dropped.
_SCRUBBED_PREFIXES = ("API_", "ADMIN_", "OTEL_", "PROMETHEUS_", "SCRIPTGATE_", "prometheus_")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def daemon(
    argv: list[str], cwd: Path, name: str, ready: Callable[[], Any], timeout: float = 30
) -> Iterator[subprocess.Popen]:
    """Start a server process in `cwd`, wait until ready() is truthy; always stop it.

    Its output goes to `cwd/<name>.out`, shown when it exits before it is ready.
    """
    output = cwd / f"{name}.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_until(
            lambda: proc.poll() is not None or ready(), timeout=timeout, what=f"{name} to be ready"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{output.read_text()[-3000:]}")
        yield proc
    finally:
        stop_process(proc)


def child_pids(pid: int) -> set[int]:
    """The children of a process (a gunicorn master's are its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the server's own settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def scriptgate_argv(port: int, workers: int, scripts: Path) -> list[str]:
    """`scriptgate serve` on 127.0.0.1:`port`."""
    return [
        SCRIPTGATE,
        "serve",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--scripts",
        str(scripts),
    ]


@dataclass
class Gunicorn:
    """A running `scriptgate serve`."""

    proc: subprocess.Popen
    port: int
    log_file: Path
    output: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.get(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + path, **kwargs)

    def worker_pids(self) -> set[int]:
        """The live worker processes (children of the gunicorn master)."""
        return child_pids(self.proc.pid)


@contextlib.contextmanager
def gunicorn(
    scripts: Path,
    tmp: Path,
    *,
    workers: int = 3,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Gunicorn]:
    """Start `scriptgate serve` on a free port; stop it however the caller ends."""
    port = free_port()
    log_file = tmp / "logs" / "framework.log"
    output = tmp / f"gunicorn-{port}.out"
    full_env = clean_env({"LOG_FILE": str(log_file), **(env or {})})
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [*scriptgate_argv(port, workers, scripts), *extra_args],
            env=full_env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(proc, port, log_file, output, full_env)
    try:
        # Any answer below 500 means the server is up (an allowlist may refuse us: 403).
        wait_until(
            lambda: (
                proc.poll() is not None
                or server.get("/_platform/health", timeout=2).status_code < 500
            ),
            timeout=30,
            what="gunicorn to answer",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited early:\n{output.read_text()[-3000:]}")
        wait_until(
            lambda: len(server.worker_pids()) >= workers, timeout=30, what=f"{workers} workers"
        )
        yield server
    finally:
        stop_process(proc)
