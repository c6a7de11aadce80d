"""Slow scripts never starve or blind the platform (real gunicorn, several workers).

Scripts here hold their thread until the test releases them (a file appears) or a
bounded time passes, and announce that they started with a file of their own, so a test
knows for certain how many calls are in flight instead of sleeping and hoping.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.prom import prometheus
from tests.servers import (
    WORKER_PID,
    Gunicorn,
    free_port,
    gunicorn,
    log_records,
    request_record,
    wait_until,
)

API_KEY = "slow-api-key"
API = {"X-API-Key": API_KEY}

# Waits (sleeping, like a script waiting on a database) until released.
HOLD = """
    TIMEOUT = 100
    import os, time, uuid
    from pathlib import Path
    def main(request):
        folder = Path(request.args["dir"])
        (folder / f"started-{os.getpid()}-{uuid.uuid4().hex}").touch()
        deadline = time.monotonic() + float(request.args.get("max", "30"))
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"pid": WORKER}
""".replace("WORKER", WORKER_PID)
# Spins on the CPU until released.
SPIN = HOLD.replace("time.sleep(0.02)", "sum(range(2000))")
LIMITED = "\n    CONCURRENCY = 3" + HOLD
# Swallows every ScriptTimeout: cannot be stopped.
STUBBORN = """
    import time
    def main(request):
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                while time.monotonic() < deadline:
                    pass
            except BaseException:
                pass
        return "finally"
"""
SCRIPTS = {
    "api/hold.py": HOLD,
    "api/spin.py": SPIN,
    "api/limited.py": LIMITED,
    "api/stubborn.py": STUBBORN,
    "api/hello.py": "def main(request):\n    return {'ok': True}\n",
}


def write(root: Path) -> Path:
    for rel, source in SCRIPTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())
    return root


class Holders:
    """Calls that hold their thread until released; always released at the end."""

    def __init__(self, server: Gunicorn, folder: Path) -> None:
        self.server = server
        self.folder = folder
        folder.mkdir()
        self.pool = concurrent.futures.ThreadPoolExecutor(64)
        self.calls: list[concurrent.futures.Future] = []

    def start(self, script: str, count: int, hold_for: float = 30) -> None:
        params = {"dir": str(self.folder), "max": str(hold_for)}
        for _ in range(count):
            self.calls.append(
                self.pool.submit(
                    self.server.get,
                    f"/api/{script}",
                    headers=API,
                    params=params,
                    timeout=hold_for + 30,
                )
            )

    def started(self) -> list[Path]:
        return list(self.folder.glob("started-*"))

    def wait_started(self, count: int) -> None:
        wait_until(lambda: len(self.started()) >= count, 20, what=f"{count} calls in flight")

    def release(self) -> list[requests.Response]:
        (self.folder / "release").touch()
        replies = [call.result(timeout=60) for call in self.calls]
        self.pool.shutdown()
        return replies


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[Holders]]:
    made: list[Holders] = []
    yield made
    for h in made:
        (h.folder / "release").touch()
        h.pool.shutdown(wait=True, cancel_futures=True)


def probe(url: str, count: int, deadline: float = 1.0) -> tuple[int, list[str]]:
    """`count` GETs, each allowed `deadline` seconds; (answered in time, failures)."""
    answered, failures = 0, []
    for _ in range(count):
        try:
            if requests.get(url, timeout=deadline).status_code == 200:
                answered += 1
            else:
                failures.append("status")
        except requests.RequestException as exc:
            failures.append(type(exc).__name__)
    return answered, failures


def test_the_platform_plane_answers_while_scripts_fill_every_thread(
    tmp_path: Path, holders: list[Holders]
) -> None:
    """3 workers x 2 threads, all six taken by scripts (three sleeping, three spinning on
    the CPU): health and metrics on the plane still answer every probe within 1 s."""
    plane = free_port()
    args = ("--threads", "2", "--platform-bind", f"127.0.0.1:{plane}")
    scripts = write(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": API_KEY}, extra_args=args) as s:
        busy = Holders(s, tmp_path / "busy")
        holders.append(busy)
        busy.start("hold.py", 3)
        busy.start("spin.py", 3)
        busy.wait_started(6)
        base = f"http://127.0.0.1:{plane}/_platform"
        health = probe(f"{base}/health", 30)
        metrics = probe(f"{base}/metrics", 30)
        in_flight = requests.get(f"{base}/metrics?format=json", timeout=1).json()
        replies = busy.release()

    assert health == (30, []), health
    assert metrics == (30, []), metrics
    assert in_flight["requests_total"] == 0  # the six were still running
    assert [r.status_code for r in replies] == [200] * 6


def test_twelve_waiting_scripts_run_at_once_on_the_default_configuration(
    tmp_path: Path, holders: list[Holders]
) -> None:
    scripts = write(tmp_path / "scripts")
    with gunicorn(scripts, tmp_path, workers=3, env={"API_KEY": API_KEY}) as server:
        waiting = Holders(server, tmp_path / "waiting")
        holders.append(waiting)
        waiting.start("hold.py", 12)
        waiting.wait_started(12)  # all twelve are inside main() at the same time
        replies = waiting.release()
    assert [r.status_code for r in replies] == [200] * 12


def test_a_concurrency_limit_is_exact_across_workers(
    tmp_path: Path, holders: list[Holders]
) -> None:
    """CONCURRENCY = 3 and four calls at once: exactly one 429. With 2 threads a worker,
    the three admitted calls are on at least two workers, so the limit held across them."""
    scripts = write(tmp_path / "scripts")
    env = {"API_KEY": API_KEY}
    with gunicorn(scripts, tmp_path, workers=3, env=env, extra_args=("--threads", "2")) as server:
        calls = Holders(server, tmp_path / "limited")
        holders.append(calls)
        calls.start("limited.py", 4)
        calls.wait_started(3)
        wait_until(lambda: any(c.done() for c in calls.calls), 20, what="the fourth call's answer")
        holding_pids = {p.name.split("-")[1] for p in calls.started()}
        replies = calls.release()
        rejected = request_record_of_status(server, 429)

    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 200, 429]
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["reason"] == "concurrency"
    assert len(holding_pids) >= 2
    assert rejected["script"] == "limited.py"


def request_record_of_status(server: Gunicorn, status: int) -> dict:
    return next(r for r in log_records(server) if r.get("status") == status)


def test_an_unstoppable_script_costs_only_its_runner_and_loses_no_other_call(
    tmp_path: Path, holders: list[Holders]
) -> None:
    """One worker: a call is in flight when another script ignores its deadline. The
    stubborn call gets its 504 at its deadline and its runner is killed; the call in
    flight and the next ones are answered by the same worker, never recycled."""
    scripts = write(tmp_path / "scripts")
    env = {"API_KEY": API_KEY, "SCRIPT_TIMEOUT": "1"}
    with gunicorn(scripts, tmp_path, workers=1, env=env) as server:
        (old_pid,) = server.worker_pids()
        other = Holders(server, tmp_path / "other")
        holders.append(other)
        other.start("hold.py", 1)
        other.wait_started(1)
        started = time.monotonic()
        stubborn = server.get("/api/stubborn.py", headers=API)
        took = time.monotonic() - started
        record = request_record(stubborn.headers["X-Trace-Id"], server)
        replies = other.release()
        after = server.get("/api/hello.py", headers=API)
        assert server.worker_pids() == {old_pid}

    assert stubborn.status_code == 504 and stubborn.json()["error"] == "timeout"
    # At its 1 s deadline, plus a cold runner's start on a loaded machine (CI saw 3.0 s
    # once); the threads design took its 2 s grace and a worker's restart on top.
    assert took < 5, f"the 504 came {took:.1f} s after the call, not at its 1 s deadline"
    assert record["status"] == 504
    assert [r.status_code for r in replies] == [200]
    assert replies[0].json()["pid"] == old_pid
    assert after.status_code == 200


def test_prometheus_scraping_every_second_never_fails_during_saturation(
    tmp_path: Path, holders: list[Holders]
) -> None:
    """60 s of every thread busy (sleeping and spinning scripts, topped up as they end):
    a real Prometheus scraping the plane every second records no failed scrape."""
    plane = free_port()
    args = ("--threads", "2", "--platform-bind", f"127.0.0.1:{plane}")
    scripts = write(tmp_path / "scripts")
    env = {"API_KEY": API_KEY, "SCRIPT_TIMEOUT": "60"}  # scripts may run up to 120 s
    with (
        prometheus(tmp_path) as prom,
        gunicorn(scripts, tmp_path, workers=3, env=env, extra_args=args) as server,
    ):
        busy = Holders(server, tmp_path / "busy")
        holders.append(busy)
        busy.start("hold.py", 3, hold_for=90)
        busy.start("spin.py", 3, hold_for=90)
        busy.wait_started(6)
        prom.scrape_port(plane)
        wait_until(lambda: prom.query('up{job="scriptgate"}'), 30, 0.5, what="a first scrape")
        started = time.monotonic()
        wait_until(
            lambda: (
                time.monotonic() - started >= 60
                and prom.query('count_over_time(up{job="scriptgate"}[70s])')
            ),
            80,
            1.0,
            what="60 s of scrapes",
        )
        scrapes = prom.query('count_over_time(up{job="scriptgate"}[70s])')
        good = prom.query('sum_over_time(up{job="scriptgate"}[70s])')
        slowest = prom.query('max_over_time(scrape_duration_seconds{job="scriptgate"}[70s])')
        targets = requests.get(f"{prom.url}/api/v1/targets", timeout=5).json()["data"]
        still_busy = len(busy.started()) >= 6 and not any(c.done() for c in busy.calls)
        busy.release()

    assert still_busy, "the scripts ended before the minute was over"
    total, succeeded = float(scrapes[0]["value"][1]), float(good[0]["value"][1])
    assert total >= 55, f"only {total} scrapes in the window"
    last_errors = [t["lastError"] for t in targets["activeTargets"]]
    assert succeeded == total, (
        f"{total - succeeded} failed scrapes of {total}; slowest {slowest}; last {last_errors}"
    )


def test_a_killed_platform_plane_is_started_again(tmp_path: Path) -> None:
    plane = free_port()
    scripts = write(tmp_path / "scripts")
    args = ("--platform-bind", f"127.0.0.1:{plane}")
    with gunicorn(scripts, tmp_path, workers=2, env={"API_KEY": API_KEY}, extra_args=args) as s:
        health = f"http://127.0.0.1:{plane}/_platform/health"
        wait_until(lambda: requests.get(health, timeout=2).ok, 20, what="the plane")
        (first,) = s.plane_pids()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: s.plane_pids() - {first}, 20, what="a new plane")
        answer = wait_until(lambda: requests.get(health, timeout=2), 20, what="the new plane")
        workers = s.worker_pids()
    assert answer.status_code == 200
    assert len(workers) == 2  # the plane is not mistaken for a worker
