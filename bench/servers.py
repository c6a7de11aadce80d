"""Start the contenders' servers on free 127.0.0.1 ports, wait for them, always stop them.

Every server's stdout and stderr go to a file (a pipe nobody reads would fill up and
stall the workers mid-benchmark). Readiness is polled with a deadline, never slept for.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import REPO, child_pids, clean_env, stop_process, wait_until

BENCH = REPO / "bench"


@dataclass
class Server:
    """One running server (gunicorn master, or Apache in front of one)."""

    name: str
    proc: subprocess.Popen | None
    port: int
    output: Path
    workers: int
    headers: dict[str, str] = field(default_factory=dict)
    master_pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """gunicorn workers are the master's children."""
        pid = self.master_pid or (self.proc.pid if self.proc else None)
        return sorted(child_pids(pid)) if pid is not None else []

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.port, path, self.headers, timeout)


def http_get(
    port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection (gunicorn's sync workers close it after each answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def gunicorn_argv(module: str, port: int, workers: int) -> list[str]:
    """The same gunicorn settings Scriptgate's own config uses: sync, N workers, /dev/shm."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-tmp-dir",
        "/dev/shm",
        "--log-level",
        "warning",
        "--pythonpath",
        str(BENCH / "apps"),
        module,
    ]


def launch(
    name: str,
    argv: list[str],
    port: int,
    env: Mapping[str, str],
    workdir: Path,
    workers: int,
    headers: Mapping[str, str] | None = None,
) -> Server:
    """Start a server process without waiting for it (so several can boot at once)."""
    output = workdir / f"{name}.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            argv, env=clean_env(env), cwd=workdir, stdout=out, stderr=subprocess.STDOUT
        )
    return Server(name, proc, port, output, workers, dict(headers or {}))


def wait_ready(server: Server, probe: str, timeout: float = 30.0) -> None:
    """Until `probe` answers 200 and every worker is up; a dead server fails with its output."""

    last: list[str] = []

    def ready() -> bool:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError("exited")
        status, _, body = server.get(probe, timeout=2)
        last[:] = [f"last answer {status} {body[:200]!r}"]
        return status == 200

    try:
        wait_until(ready, timeout=timeout, what=f"{server.name} to answer {probe} with 200")
        wait_until(
            lambda: len(server.worker_pids()) >= server.workers,
            timeout=timeout,
            what=f"{server.name} workers",
        )
    except (TimeoutError, RuntimeError) as exc:
        tail = server.output.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{server.name} did not start: {exc} {''.join(last)}\n{tail}") from None


def stop(server: Server) -> None:
    if server.proc is not None:
        stop_process(server.proc)


def stop_all(servers: list[Server]) -> None:
    """SIGTERM every server first, then wait for each: shutdowns overlap instead of queueing."""
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGQUIT)
    for server in servers:
        stop(server)  # waits, and kills one that ignored SIGTERM


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process, from /proc/PID/status (VmRSS)."""
    return _proc_kb(pid, "status", "VmRSS:")


def anon_pss_mb(pid: int) -> float | None:
    """Anonymous memory of one process, a page shared by n processes counting 1/n.

    RSS counts a page that forked workers still share with their master once in every
    process, so a sum of RSS overstates what a server costs. Summed over a process tree,
    Pss_Anon counts each anonymous page once (only the tree maps them); file pages, the
    libraries' code, are left out, as their share moves with whatever else runs.
    """
    return _proc_kb(pid, "smaps_rollup", "Pss_Anon:")


def _proc_kb(pid: int, name: str, field: str) -> float | None:
    """A "Field:  N kB" line of /proc/PID/`name`, in MB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
