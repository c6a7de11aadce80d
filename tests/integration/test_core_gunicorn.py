"""The core platform under real gunicorn with several workers."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.servers import REPO, WORKER_PID, alive, gunicorn, request_record, wait_until

KEY = "integration-key-5f1c"
API = {"X-API-Key": KEY}


def write(path: Path, source: str) -> None:
    """Write atomically, as an editor or deploy tool would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(textwrap.dedent(source).lstrip())
    os.replace(tmp, path)


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    root = tmp_path / "scripts"
    write(
        root / "api" / "pid.py",
        """
        import os
        def main(request):
            return {"pid": WORKER, "runner": os.getpid()}
        """.replace("WORKER", WORKER_PID),
    )
    write(root / "hello.py", "def main(request):\n    return 'hello'\n")
    return root


VERSIONED = f"import os\ndef main(request):\n    return {{'v': V, 'pid': {WORKER_PID}}}\n"


def call_many(server, path: str, n: int, headers=None) -> list[requests.Response]:
    """n requests, each on a new connection, from 6 client threads (spreads over workers)."""
    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(lambda _: server.get(path, headers=headers), range(n)))


def spread_calls(server, path: str, headers=None, workers: int = 2, rounds: int = 10):
    """Batches of 30 concurrent calls until replies came from `workers` pids (bounded)."""
    replies: list[requests.Response] = []
    for _ in range(rounds):
        replies += call_many(server, path, 30, headers)
        if len({r.json()["pid"] for r in replies if r.ok}) >= workers:
            break
    return replies


def test_script_is_live_in_every_worker_then_edited_then_deleted(scripts, tmp_path):
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": KEY}) as server:
        target = scripts / "api" / "report.py"
        assert server.get("/api/report.py", headers=API).status_code == 404
        write(target, VERSIONED.replace("V", "1"))
        first = spread_calls(server, "/api/report.py", API)
        assert {r.status_code for r in first} == {200}
        assert {r.json()["v"] for r in first} == {1}
        assert len({r.json()["pid"] for r in first}) >= 2, "load did not reach several workers"

        write(target, VERSIONED.replace("V", "2"))
        second = spread_calls(server, "/api/report.py", API)
        assert {r.json()["v"] for r in second} == {2}
        assert len({r.json()["pid"] for r in second}) >= 2

        target.unlink()
        third = call_many(server, "/api/report.py", 30, API)
        assert {r.status_code for r in third} == {404}


def test_unchanged_script_is_imported_once_per_runner_and_runners_stay_warm(scripts, tmp_path):
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": KEY}) as server:
        replies = [r.json() for r in spread_calls(server, "/api/pid.py", API)]
        assert len({r["pid"] for r in replies}) >= 2
        # Concurrent calls in one worker get runners of their own, reused afterwards: far
        # fewer imports (runners) than calls, never more than a worker's threads.
        runners: dict[int, set[int]] = {}
        for reply in replies:
            runners.setdefault(reply["pid"], set()).add(reply["runner"])
        assert all(len(pids) <= 8 for pids in runners.values()), runners
        # One call after another: each lands on a warm runner of its worker.
        one_by_one = [server.get("/api/pid.py", headers=API).json() for _ in range(20)]
        assert all(r["runner"] in runners.get(r["pid"], {r["runner"]}) for r in one_by_one)


def test_log_file_lines_never_interleave_under_load(scripts, tmp_path):
    # Failures log stack traces far longer than a pipe buffer or stdio buffer.
    write(
        scripts / "api" / "boom.py",
        """
        def main(request):
            raise ValueError("x" * 20000)
        """,
    )
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": KEY}) as server:
        replies = call_many(server, "/api/boom.py", 90, API) + call_many(server, "/hello.py", 90)
        assert sorted({r.status_code for r in replies}) == [200, 500]
        lines = server.log_file.read_text().splitlines()
        records = [json.loads(line) for line in lines]  # every line is one whole JSON object
        requests_logged = [r for r in records if r["message"] == "request"]
        errors = [r for r in records if r["level"] == "ERROR"]
        assert len(requests_logged) >= 180
        assert len(errors) == 90
        assert all("x" * 20000 in e["exc_info"] for e in errors)
        failed_ids = {r.headers["X-Trace-Id"] for r in replies if r.status_code == 500}
        assert {e["trace_id"] for e in errors} == failed_ids


def test_runaway_script_gets_504_and_only_its_runner_is_killed(scripts, tmp_path):
    pid_file = tmp_path / "stubborn.pid"
    write(
        scripts / "stubborn.py",
        f"""
        import os
        def main(request):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            while True:
                try:
                    while True:
                        pass
                except BaseException:
                    pass
        """,
    )
    write(scripts / "whoami.py", "import os\ndef main(request):\n    return str(os.getpid())\n")
    env = {"SCRIPT_TIMEOUT": "0.5"}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as server:
        before = server.worker_pids()
        response = server.get("/stubborn.py", timeout=20)
        assert response.status_code == 504
        assert response.json()["error"] == "timeout"
        assert response.headers["X-Trace-Id"] == response.json()["trace_id"]
        runner = int(pid_file.read_text())
        wait_until(lambda: not alive(runner), timeout=5, what="the stubborn runner to be killed")
        assert server.worker_pids() == before  # no worker was recycled for it
        assert {r.status_code for r in call_many(server, "/whoami.py", 20)} == {200}
        health = server.get("/_platform/health").json()
        assert health["errors_total"] == 1
        assert request_record(response.headers["X-Trace-Id"], server)["status"] == 504


def test_script_calling_os_exit_3_costs_only_its_own_call(scripts, tmp_path):
    write(scripts / "die.py", "import os\ndef main(request):\n    os._exit(3)\n")
    with gunicorn(scripts, tmp_path, workers=2) as server:
        before = server.worker_pids()
        response = server.get("/die.py")
        assert response.status_code == 500
        assert response.json()["reason"] == "runner_died"
        assert server.proc.poll() is None
        assert server.worker_pids() == before
        assert {r.status_code for r in call_many(server, "/hello.py", 20)} == {200}
        errors = server.get("/_platform/metrics").text
        crashed = 'scriptgate_script_errors_total{kind="crashed",script="die.py",zone="root"}'
        assert f"{crashed} 1.0" in errors


def test_serve_leaves_no_files_in_home_or_working_tree(scripts, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    existing = set(glob.glob("/tmp/scriptgate-metrics-*"))
    with gunicorn(scripts, tmp_path, workers=2, env={"HOME": str(home)}) as server:
        # The private metrics directory is the one that appeared with this server.
        created = wait_until(
            lambda: set(glob.glob("/tmp/scriptgate-metrics-*")) - existing,
            timeout=10,
            what="the private metrics directory",
        )
        metrics_dir = Path(created.pop())
        assert metrics_dir.is_dir()
        server.get("/hello.py")
    assert list(home.iterdir()) == []
    # logs/ and data/ (the job queue: JOB_DATA_DIR) are the defaults' own folders.
    leftovers = {p.name for p in tmp_path.iterdir()} - {"scripts", "home", "logs", "data"}
    assert all(name.startswith("gunicorn-") and name.endswith(".out") for name in leftovers)
    assert not metrics_dir.exists(), "the private metrics directory outlived the server"
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "service"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.count(".pid")
        == 0
    )


def test_cli_routes_and_check(tmp_path, scripts):
    write(scripts / "api" / "broken.py", "def main(request)\n    pass\n")
    write(scripts / "admin" / "nohandler.py", "X = 1\n")
    bin_dir = Path(sys.executable).parent
    routes = subprocess.run(
        [bin_dir / "scriptgate", "routes", "--scripts", str(scripts)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert routes.returncode == 0
    assert json.loads(routes.stdout) == {
        "root": ["hello.py"],
        "api": ["broken.py", "pid.py"],
        "admin": ["nohandler.py"],
    }
    check = subprocess.run(
        [bin_dir / "scriptgate", "check", "--scripts", str(scripts)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 1
    assert "api/broken.py" in check.stderr and "SyntaxError" in check.stderr
    assert "admin/nohandler.py" in check.stderr and "no handle" in check.stderr
    assert "pid.py" not in check.stderr
    assert "2 of 4 scripts OK" in check.stdout
    ok = subprocess.run(
        [bin_dir / "scriptgate", "check", "--scripts", str(REPO / "scripts")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr


def test_bad_configuration_stops_serve_before_binding(tmp_path, scripts):
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [bin_dir / "scriptgate", "serve", "--bind", "127.0.0.1:1", "--scripts", str(scripts)],
        env={**os.environ, "TRUSTED_PROXIES": "10.0.0.0/40"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: TRUSTED_PROXIES: '10.0.0.0/40' is not an IP address or CIDR"
    ]
