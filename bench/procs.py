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
_SCRUBBED_PREFIXES = (
    "API_",
    "ADMIN_",
    "JOB_",
    "OTEL_",
    "PROMETHEUS_",
    "SCRIPTGATE_",
    "prometheus_",
)
REDIS_SERVER = Path("/usr/bin/redis-server")

# In a script: the pid of the gunicorn worker whose runner runs it (the runner's parent is
# its worker's zygote). Tests use it to see which worker served a call.
WORKER_PID = 'int(open(f"/proc/{os.getppid()}/stat").read().rpartition(")")[2].split()[1])'


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
    """The children of a process (a gunicorn master's are its workers), whichever of its
    threads started them: a gthread worker's zygote is its request thread's child."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> set[int]:
    """Every process below `pid`: a worker's zygote and its runners, where scripts run."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        children = child_pids(todo.pop()) - found
        found |= children
        todo += children
    return found


PLANE_NAME = "sg-plane"  # service/platform/plane.py names its process so
JOBS_NAME = "scriptgate-jobs"  # the job supervisor (service/jobs/worker.py)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the server's own settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    # No job workers unless asked for: they are processes besides gunicorn's workers,
    # which tests count and benchmarks measure.
    env["JOB_WORKERS"] = "0"
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
        """The live worker processes (the gunicorn master's children but the plane)."""
        helpers = (PLANE_NAME, JOBS_NAME)
        return {p for p in child_pids(self.proc.pid) if process_name(p) not in helpers}

    def children_named(self, name: str) -> set[int]:
        return {p for p in child_pids(self.proc.pid) if process_name(p) == name}

    def plane_pids(self) -> set[int]:
        return self.children_named(PLANE_NAME)


@contextlib.contextmanager
def gunicorn(
    scripts: Path,
    tmp: Path,
    *,
    workers: int = 3,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    python: str | None = None,
) -> Iterator[Gunicorn]:
    """Start `scriptgate serve` on a free port; stop it however the caller ends.
    `python`: run it with that interpreter (`python -m service.cli`) instead."""
    port = free_port()
    log_file = tmp / "logs" / "framework.log"
    output = tmp / f"gunicorn-{port}.out"
    full_env = clean_env({"LOG_FILE": str(log_file), **(env or {})})
    argv = scriptgate_argv(port, workers, scripts)
    if python is not None:
        argv[:1] = [python, "-m", "service.cli"]
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [*argv, *extra_args],
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


@contextlib.contextmanager
def serving(
    argv: list[str], cwd: Path, name: str, answers: Callable[[], bool], **popen: Any
) -> Iterator[subprocess.Popen]:
    """Start a server process, yield once `answers()`; stopped however the caller ends.
    Its output goes to `<cwd>/<name>.out`, shown if it exits before answering."""
    output = cwd / f"{name}.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, **popen)
    try:
        seen = wait_until(
            lambda: "exited" if proc.poll() is not None else answers() and "up",
            timeout=30,
            what=f"{name} to answer",
        )
        if seen == "exited":
            raise RuntimeError(f"{name} exited early:\n{output.read_text()[-3000:]}")
        yield proc
    finally:
        stop_process(proc, timeout=30)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A throwaway redis-server on a free 127.0.0.1 port, nothing saved; yields its URL."""
    port = free_port()
    argv = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp)]
    with serving(argv, tmp, f"redis-{port}", lambda: _redis_answers(port)):
        yield f"redis://127.0.0.1:{port}/0"


def _redis_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def jobs_command(
    scripts: Path, tmp: Path, extra: dict[str, str], workers: int = 1
) -> Iterator[str]:
    """`scriptgate jobs` with its platform plane; yields the plane's URL."""
    port = free_port()
    argv = [SCRIPTGATE, "jobs", "--workers", str(workers), "--scripts", str(scripts)]
    argv += ["--platform-bind", f"127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}"
    env = clean_env({"LOG_FILE": str(tmp / "jobs.log"), **extra})
    with serving(
        argv, tmp, "jobs", lambda: requests.get(url + "/_platform/health", timeout=2).ok, env=env
    ):
        yield url
