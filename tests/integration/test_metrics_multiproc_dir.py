"""An explicit PROMETHEUS_MULTIPROC_DIR belongs to one server at a time and starts empty."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from tests.integration.prom import API, API_KEY, requests_by_series, script_requests, write_scripts
from tests.servers import SCRIPTGATE, free_port, gunicorn, stop_process


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    return directory


def test_second_server_on_the_same_dir_refuses_to_start(tmp_path: Path, metrics_dir: Path) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    env = {"API_KEY": API_KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as first:
        for _ in range(5):
            assert first.get("/api/pid.py", headers=API).ok
        port = free_port()
        argv = ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--scripts", str(scripts)]
        second = subprocess.Popen(
            [SCRIPTGATE, *argv],
            env=first.env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = second.communicate(timeout=15)
        finally:
            stop_process(second)  # only does anything if it wrongly started
        health = first.get("/_platform/health").json()

    assert second.returncode == 2, stderr
    lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "PROMETHEUS_MULTIPROC_DIR" in lines[0]
    assert str(metrics_dir) in lines[0]
    assert health["requests_total"] == 5, "the refused server touched the first one's metrics"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/_platform/health", timeout=2)


def test_restart_on_the_same_dir_starts_from_zero(tmp_path: Path, metrics_dir: Path) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    env = {"API_KEY": API_KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as first:
        for _ in range(4):
            assert first.get("/api/pid.py", headers=API).ok
        assert first.get("/_platform/health").json()["requests_total"] == 4
    left_over = sorted(p.name for p in metrics_dir.glob("counter_*.db"))
    assert left_over, "the stopped server left no counter files, so the restart proves nothing"

    with gunicorn(scripts, tmp_path, workers=2, env=env) as second:
        health = second.get("/_platform/health").json()
        counts = requests_by_series(second)
        assert second.get("/api/pid.py", headers=API).ok
        after_one = second.get("/_platform/health").json()

    assert health["requests_total"] == 0, f"stale files counted again: {left_over}"
    assert script_requests(counts) == 0, counts
    assert after_one["requests_total"] == 1
