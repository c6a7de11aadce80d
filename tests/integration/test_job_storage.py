"""The job store when things go wrong, on real gunicorn, real runners and real stores:
a runner killed while it writes its result, a full disk under the SQLite store (a real
tmpfs), and a server stopped with jobs running (SIGTERM, and SIGKILL of every process).
What must hold: a job never reads `succeeded` with a torn result, never stays `running`
for nothing, and nothing accepted before is lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.procs import descendants
from tests.servers import Gunicorn, gunicorn, wait_until

KEY = "storage-key-0123456789abcdef"
ASYNC = {"X-API-Key": KEY, "Prefer": "respond-async"}
SCRIPTS = {
    "torn.py": '''"""Writes half of its answer on its runner's socket, then dies (SIGKILL)."""
import json, os, signal, stat, struct
RETRIES = 1
RETRY_DELAY = 0.1
def main(request):
    if request.environ.get("scriptgate.job_attempt") == 2:
        return {"second": "run"}
    head = json.dumps({"t": "response", "status": "200 OK", "headers": []}).encode()
    frames = struct.pack("!IB", len(head), ord("J")) + head
    frames += struct.pack("!IB", 1_000_000, ord("B")) + b"only the start of the body"
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, frames)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
''',
    "torn_stream.py": '''"""Streams one chunk, then dies (SIGKILL) mid-stream."""
import os, signal
def main(request):
    def chunks():
        yield "the start\\n"
        os.kill(os.getpid(), signal.SIGKILL)
        yield "never"
    return chunks()
''',
    "ok.py": """def main(request):
    return {"ok": True}
""",
    "big.py": '''"""Waits for the test's gate, logs, then answers 600 kB."""
import os, time
def main(request):
    gate = request.args["gate"]
    print("waiting for the gate")
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "x" * 600_000
''',
    "gated.py": '''"""Prints, then waits for the test's gate (at most 30 s), then answers."""
import os, time
JOB_TIMEOUT = 120
def main(request):
    gate = request.args["gate"]
    print("started")
    deadline = time.monotonic() + float(request.args.get("wait", "30"))
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"gate": os.path.exists(gate)}
''',
}


def setup(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    (scripts / "api").mkdir(parents=True)
    for name, source in SCRIPTS.items():
        (scripts / "api" / name).write_text(source)
    return scripts


def start(server: Gunicorn, script: str, **params: str) -> str:
    response = server.get(f"/api/{script}", headers=ASYNC, params=params)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(server: Gunicorn, job_id: str) -> dict:
    response = server.get(f"/_platform/jobs/{job_id}", headers={"X-API-Key": KEY})
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(server: Gunicorn, job_id: str, *states: str, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (found := job(server, job_id))["state"] in states and found,
        timeout=timeout,
        interval=0.1,
        what=f"job {job_id} to be {' or '.join(states)}",
    )


def test_a_runner_killed_while_writing_its_result_fails_the_run_and_its_retry_answers(
    tmp_path, store_env
):
    scripts = setup(tmp_path)
    env = {"API_KEY": KEY, "JOB_WORKERS": "1", **store_env}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        torn = start(server, "torn.py")
        first = wait_state(server, torn, "failed")
        assert first["result"]["status"] == 500 and first["retried_as"]
        result = server.get(first["result"]["url"], headers={"X-API-Key": KEY})
        assert result.json()["error"] == "internal error"  # not half a body
        assert "only the start" not in result.text
        retry = wait_state(server, first["retried_as"], "succeeded")
        assert server.get(retry["result"]["url"], headers={"X-API-Key": KEY}).json() == {
            "second": "run"
        }
        cut = start(server, "torn_stream.py")
        done = wait_state(server, cut, "failed")
        assert done["result"]["status"] == 500  # a stream that did not end is no result
        assert wait_state(server, start(server, "ok.py"), "succeeded")  # the worker goes on
        # A call (not a job) that tears its answer: a 500, never a partial 200.
        call = server.get("/api/torn_stream.py", headers={"X-API-Key": KEY})
        assert call.status_code == 200 and call.text == "the start\n"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real, small filesystem (root only: CI and these sessions run as root)."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Fill the filesystem of `path` but `leave` bytes; the filler file."""
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    filler = path / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = max(0, free - leave)
        while left > 0:
            f.write(chunk[: min(len(chunk), left)])
            left -= min(len(chunk), left)
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_disk_under_sqlite_answers_503_and_loses_no_job_already_accepted(tmp_path):
    scripts = setup(tmp_path)
    with tmpfs(tmp_path / "data", "8m") as data:
        env = {"API_KEY": KEY, "JOB_WORKERS": "1", "JOB_DATA_DIR": str(data)}
        with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
            gate = tmp_path / "gate"
            waiting = start(server, "big.py", gate=str(gate))
            wait_state(server, waiting, "running")
            queued = start(server, "ok.py")  # accepted before the disk fills
            filler = fill(data, leave=64 * 1024)
            gate.touch()  # the 600 kB result cannot be written now
            ended = wait_state(server, waiting, "failed", timeout=30)
            assert "could not be stored" in ended["error"]
            assert "result" not in ended or ended["result"] is None
            full = server.get("/api/ok.py", headers=ASYNC)
            # A new job may still fit in what is left; if it does not, it is a 503 and
            # nothing half-recorded.
            assert full.status_code in (202, 503), full.text
            if full.status_code == 503:
                assert full.json()["error"] == "job queue unavailable"
            filler.unlink()  # space again: what was accepted runs
            assert wait_state(server, queued, "succeeded")["result"]["status"] == 200
            lines = server.get(
                f"/_platform/jobs/{waiting}/logs", headers={"X-API-Key": KEY}
            ).json()["lines"]
            assert [line["message"] for line in lines] == ["waiting for the gate"]
            later = start(server, "ok.py")
            assert wait_state(server, later, "succeeded")


def kill_everything(server: Gunicorn) -> None:
    """SIGKILL the server and every process under it, as a power cut or OOM kill would."""
    victims = {server.proc.pid, *descendants(server.proc.pid)}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(10)
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in victims),
        timeout=10,
        what="every process of the server to be gone",
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_server_killed_with_a_job_running_reports_it_lost_at_restart_not_a_minute_later(
    tmp_path, store_env
):
    scripts = setup(tmp_path)
    gate = tmp_path / "gate"
    env = {"API_KEY": KEY, "JOB_WORKERS": "1", **store_env}
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        running = start(server, "gated.py", gate=str(gate))
        wait_state(server, running, "running")
        queued = start(server, "ok.py")  # behind it: the only job worker is busy
        wait_until(
            lambda: server.get(
                f"/_platform/jobs/{running}/logs", headers={"X-API-Key": KEY}
            ).json()["lines"],
            timeout=10,
            what="the running job's first line",
        )
        kill_everything(server)
    restarted = time.monotonic()
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        lost = wait_state(server, running, "failed", timeout=20)
        assert time.monotonic() - restarted < 20  # not LOST_AFTER_SECONDS (60 s) later
        assert lost["error"] == "lost: its server stopped while it ran"
        assert wait_state(server, queued, "succeeded")  # accepted, so it still runs
        events = requests.get(
            f"{server.url}/_platform/jobs/{running}/events", headers={"X-API-Key": KEY}, timeout=10
        ).text
        data = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]
        assert "started" in [d.get("message") for d in data]  # its line, kept
        assert data[-1]["state"] == "failed"  # and the stream ends with its end


def test_a_server_stopped_with_sigterm_lets_a_job_finish_within_its_grace(tmp_path, store_env):
    scripts = setup(tmp_path)
    gate = tmp_path / "gate"
    env = {"API_KEY": KEY, "JOB_WORKERS": "1", **store_env}
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        short = start(server, "gated.py", gate=str(gate), wait="2")  # ends 2 s in, gate or not
        wait_state(server, short, "running")
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        done = job(server, short)
        assert done["state"] == "succeeded", done  # finished in its 10 s of grace
        assert server.get(done["result"]["url"], headers={"X-API-Key": KEY}).json() == {
            "gate": False
        }
