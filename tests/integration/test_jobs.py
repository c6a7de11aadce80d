"""Jobs on real servers: gunicorn with its job workers, the embedded SQLite store and a
real redis-server shared by two servers. What a user relies on: a job survives its
HTTP worker and a restart, stops when cancelled, times out, runs exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from bench.procs import child_pids, clean_env, jobs_command
from tests.servers import (
    SCRIPTGATE,
    Gunicorn,
    free_port,
    gunicorn,
    log_records,
    stays_the_same,
    wait_until,
)

API_KEY = "jobs-key-0123456789"
OTHER_KEY = "jobs-other-key-9876543210"
KEY = {"X-API-Key": API_KEY}
ASYNC = {**KEY, "Prefer": "respond-async"}
SCRIPTS = {
    "append.py": '''"""Append n to a file: each line is one run."""
def main(request):
    with open(request.args["file"], "a") as f:
        f.write(request.args.get("n", "0") + "\\n")
    return {"n": int(request.args.get("n", "0"))}
''',
    "tick.py": '''"""A line every 50 ms, for a minute."""
import time
JOB_TIMEOUT = 120
def main(request):
    for _ in range(1200):
        with open(request.args["file"], "a") as f:
            f.write("tick\\n")
        time.sleep(0.05)
''',
    "stuck.py": '''"""Blocked in C: no interrupt reaches it."""
import os, time
def main(request):
    with open(request.args["file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
''',
    "timeout.py": '''"""Runs past its own JOB_TIMEOUT."""
import time
JOB_TIMEOUT = 1
def main(request):
    while True:
        with open(request.args["file"], "a") as f:
            f.write("tick\\n")
        time.sleep(0.05)
''',
    "pause.py": '''"""Takes a while, then answers."""
import time
def main(request):
    for _ in range(30):
        time.sleep(0.05)
    return "done after a pause"
''',
}


def write_scripts(root: Path) -> Path:
    (root / "api").mkdir(parents=True)
    for name, source in SCRIPTS.items():
        (root / "api" / name).write_text(source)
    return root


def env(job_workers: int, **extra: str) -> dict[str, str]:
    return {"API_KEY": f"{API_KEY},{OTHER_KEY}", "JOB_WORKERS": str(job_workers), **extra}


def start(server: Gunicorn, script: str, **params: str) -> str:
    response = server.get(f"/api/{script}", headers=ASYNC, params=params)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(server: Gunicorn, job_id: str, key: str = API_KEY) -> dict:
    response = server.get(f"/_platform/jobs/{job_id}", headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(server: Gunicorn, job_id: str, state: str, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (found := job(server, job_id))["state"] == state and found,
        timeout=timeout,
        interval=0.1,
        what=f"job {job_id} to be {state}",
    )


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def supervisor(server: Gunicorn) -> int:
    return next(iter(server.children_named("scriptgate-jobs")))


def job_workers(server: Gunicorn) -> set[int]:
    return {pid for pid in child_pids(supervisor(server)) if comm(pid) == "scriptgate-job"}


def test_redis_job_started_on_one_server_runs_and_reads_on_another(tmp_path, redis):
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        gunicorn(scripts, tmp_path / "a", workers=1, env=env(0, JOB_BROKER_URL=redis)) as a,
        gunicorn(scripts, tmp_path / "b", workers=1, env=env(1, JOB_BROKER_URL=redis)) as b,
    ):
        job_id = start(a, "append.py", file=str(side), n="7")  # a runs no job workers
        done = wait_state(b, job_id, "succeeded")
        assert done["script"] == "/api/append.py"
        result = a.get(f"/_platform/jobs/{job_id}/result", headers=KEY)
        assert (result.status_code, result.json()) == (200, {"n": 7})
        assert (
            b.get(f"/_platform/jobs/{job_id}", headers={"X-API-Key": OTHER_KEY}).status_code == 404
        )
    assert side.read_text() == "7\n"


def test_job_outlives_its_http_worker(tmp_path):
    scripts = write_scripts(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=2, env=env(1)) as server:
        job_id = start(server, "pause.py")
        http_workers = server.worker_pids() - {supervisor(server)}
        for pid in http_workers:
            os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: len(server.worker_pids() - {supervisor(server)} - http_workers) == 2,
            what="gunicorn to replace its workers",
        )
        wait_state(server, job_id, "succeeded")
        result = server.get(f"/_platform/jobs/{job_id}/result", headers=KEY)
        assert result.text == "done after a pause"


def test_queued_jobs_run_after_a_server_restart(tmp_path, store_env):
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    extra = store_env
    with gunicorn(scripts, tmp_path, workers=1, env=env(0, **extra)) as server:
        ids = [start(server, "append.py", file=str(side), n=str(n)) for n in range(3)]
        assert {job(server, job_id)["state"] for job_id in ids} == {"queued"}
    with gunicorn(scripts, tmp_path, workers=1, env=env(1, **extra)) as server:
        for job_id in ids:
            wait_state(server, job_id, "succeeded")
    assert sorted(side.read_text().split()) == ["0", "1", "2"]


def test_cancelling_a_running_job_stops_its_script(tmp_path, store_env):
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    extra = store_env
    with gunicorn(scripts, tmp_path, workers=1, env=env(1, **extra)) as server:
        job_id = start(server, "tick.py", file=str(side))
        wait_until(lambda: side.exists() and side.stat().st_size > 20, what="the script to tick")
        response = server.request("DELETE", f"/_platform/jobs/{job_id}", headers=KEY)
        assert response.status_code == 202 and response.json()["cancel_requested"] is True
        done = wait_state(server, job_id, "cancelled", timeout=10)
        assert stays_the_same(side)
        assert done["error"] == "cancelled" and "result" not in done


def test_cancelling_a_script_blocked_in_c_kills_its_runner_and_keeps_its_job_worker(tmp_path):
    scripts = write_scripts(tmp_path / "scripts")
    marker, side = tmp_path / "marker", tmp_path / "side"
    with gunicorn(scripts, tmp_path, workers=1, env=env(1)) as server:
        job_id = start(server, "stuck.py", file=str(marker))
        runner = int(wait_until(lambda: marker.exists() and marker.read_text(), what="a start"))
        (before,) = job_workers(server)
        server.request("DELETE", f"/_platform/jobs/{job_id}", headers=KEY)
        wait_state(server, job_id, "cancelled", timeout=15)
        wait_until(lambda: not Path(f"/proc/{runner}").exists(), what="the runner to be reaped")
        after = start(server, "append.py", file=str(side), n="1")
        wait_state(server, after, "succeeded")
        assert job_workers(server) == {before}  # nothing to retire: the runner went alone


def test_job_past_its_timeout_is_timed_out(tmp_path):
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    with gunicorn(scripts, tmp_path, workers=1, env=env(1)) as server:
        job_id = start(server, "timeout.py", file=str(side))
        done = wait_state(server, job_id, "timed_out", timeout=20)
        assert done["result"]["status"] == 504
        result = server.get(f"/_platform/jobs/{job_id}/result", headers=KEY)
        assert (result.status_code, result.json()["error"]) == (504, "timeout")
        assert stays_the_same(side)


def test_killed_job_worker_fails_its_job_and_is_replaced(tmp_path):
    scripts = write_scripts(tmp_path / "scripts")
    marker, side = tmp_path / "marker", tmp_path / "side"
    metrics_dir = tmp_path / "metrics"
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with gunicorn(scripts, tmp_path, workers=1, env=env(1, **extra)) as server:
        job_id = start(server, "stuck.py", file=str(marker))
        wait_until(marker.exists, what="the script to start")
        (victim,) = job_workers(server)
        os.kill(victim, signal.SIGKILL)
        done = wait_state(server, job_id, "failed", timeout=15)
        assert done["error"] == "the job worker died (signal SIGKILL)"
        after = start(server, "append.py", file=str(side), n="2")
        wait_state(server, after, "succeeded")
        # The dead worker's metrics were folded into the archive, as for HTTP workers.
        assert not list(metrics_dir.glob(f"*_{victim}.db"))
        text = server.get("/_platform/metrics").text
        assert 'scriptgate_jobs_total{script="stuck.py",state="failed",zone="api"} 1.0' in text
        lost = [r for r in log_records(server) if r["message"].startswith("job failed:")]
        assert [(r["job_id"], r["caller"]) for r in lost] == [(job_id, "api-key-1")]


def test_200_jobs_submitted_at_once_all_finish_exactly_once(tmp_path, store_env):
    extra = store_env
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    with gunicorn(scripts, tmp_path, workers=2, env=env(2, **extra)) as server:
        with ThreadPoolExecutor(16) as pool:
            ids = list(
                pool.map(lambda n: start(server, "append.py", file=str(side), n=str(n)), range(200))
            )
        wait_until(
            lambda: side.exists() and len(side.read_text().split()) >= 200,
            timeout=120,
            interval=0.25,
            what="200 jobs to run",
        )
        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(lambda job_id: job(server, job_id)["state"], ids))
    assert len(set(ids)) == 200
    assert states == ["succeeded"] * 200
    assert sorted(map(int, side.read_text().split())) == list(range(200))


def test_job_span_is_a_child_of_the_call_and_its_logs_carry_the_ids(tmp_path):
    from tests.integration.test_core_otlp import Receiver

    receiver = Receiver()
    receiver.thread.start()
    scripts = write_scripts(tmp_path / "scripts")
    extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with gunicorn(scripts, tmp_path, workers=1, env=env(1, **extra)) as server:
            response = server.get(
                "/api/append.py", headers=ASYNC, params={"file": str(tmp_path / "side")}
            )
            trace_id, job_id = response.headers["X-Trace-Id"], response.json()["id"]
            wait_state(server, job_id, "succeeded")
            spans = wait_until(
                lambda: (
                    (found := receiver.for_trace(trace_id))
                    and {"job /api/append.py", "script.run"} <= {s["name"] for s in found}
                    and found
                ),
                timeout=20,
                what="the job's spans in the call's trace",
            )
            records = wait_until(
                lambda: (
                    len(found := [r for r in log_records(server) if r.get("job_id") == job_id]) >= 2
                    and found
                ),
                what="the job's log lines",
            )
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    by_name = {s["name"]: s for s in spans}
    server_span = next(s for s in spans if s["kind"] == 2)  # SERVER
    enqueue, run = by_name["job.enqueue"], by_name["job /api/append.py"]
    assert (enqueue["kind"], enqueue["parent"]) == (4, server_span["span_id"])  # PRODUCER
    assert (run["kind"], run["parent"]) == (5, enqueue["span_id"])  # CONSUMER
    assert run["attributes"]["scriptgate.job_id"] == job_id
    assert run["attributes"]["enduser.id"] == "api-key-1"  # the caller, as on the call's span
    assert any(s["name"] == "script.run" and s["parent"] == run["span_id"] for s in spans)
    assert {r["message"] for r in records} >= {"job queued", "job"}
    assert {r["trace_id"] for r in records} == {trace_id}
    assert {r["caller"] for r in records} == {"api-key-1"}


def test_an_edited_script_is_reimported_for_the_next_job(tmp_path):
    scripts = write_scripts(tmp_path / "scripts")
    version = scripts / "api" / "version.py"
    version.write_text("def main(request):\n    return 'v1'\n")
    with gunicorn(scripts, tmp_path, workers=1, env=env(1)) as server:
        first = start(server, "version.py")
        wait_state(server, first, "succeeded")
        version.write_text("def main(request):\n    return 'version two'\n")
        second = start(server, "version.py")
        wait_state(server, second, "succeeded")
        answers = [
            server.get(f"/_platform/jobs/{job_id}/result", headers=KEY).text
            for job_id in (first, second)
        ]
    assert answers == ["v1", "version two"]


def test_scriptgate_jobs_runs_the_jobs_of_servers_without_workers(tmp_path, redis):
    scripts = write_scripts(tmp_path / "scripts")
    side = tmp_path / "side"
    extra = {"API_KEY": API_KEY, "JOB_BROKER_URL": redis}
    with (
        gunicorn(scripts, tmp_path, workers=1, env=env(0, JOB_BROKER_URL=redis)) as server,
        jobs_command(scripts, tmp_path, extra) as plane,
    ):
        job_id = start(server, "append.py", file=str(side), n="3")
        wait_state(server, job_id, "succeeded")
        metrics = requests.get(plane + "/_platform/metrics", timeout=10).text
    assert "scriptgate_job_workers 1.0" in metrics
    assert 'scriptgate_jobs_total{script="append.py",state="succeeded",zone="api"} 1.0' in metrics
    assert side.read_text() == "3\n"


@pytest.mark.parametrize(
    ("command", "setting", "variable"),
    [
        ("serve", {"JOB_BROKER_URL": "redis://:hunter2@127.0.0.1:{port}/0"}, "JOB_BROKER_URL"),
        ("jobs", {"JOB_BROKER_URL": "redis://:hunter2@127.0.0.1:{port}/0"}, "JOB_BROKER_URL"),
        ("serve", {"JOB_DATA_DIR": "{tmp}/file/data"}, "JOB_DATA_DIR"),
        ("jobs", {"JOB_WORKERS": "0"}, "JOB_WORKERS"),
    ],
)
def test_a_store_that_cannot_open_stops_startup_with_one_line(tmp_path, command, setting, variable):
    scripts = write_scripts(tmp_path / "scripts")
    (tmp_path / "file").write_text("")
    values = {"port": str(free_port()), "tmp": str(tmp_path)}
    extra = {name: value.format(**values) for name, value in setting.items()}
    argv = [SCRIPTGATE, command, "--scripts", str(scripts)]
    if command == "serve":
        argv += ["--bind", f"127.0.0.1:{free_port()}"]
    elif "JOB_WORKERS" not in extra:
        argv += ["--workers", "1"]
    done = subprocess.run(
        argv, env=clean_env(extra), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: {variable}: ")
    assert "hunter2" not in done.stderr + done.stdout
