"""Schedules: how close to its time a scheduled job starts, and what 1,000 schedules cost.

    .venv/bin/python bench/schedules.py            # make bench-schedules, a few minutes
    .venv/bin/python bench/schedules.py --quick    # 10 samples, 200 schedules
    .venv/bin/python bench/schedules.py --part recovery   # a killed scheduler's time

On `scriptgate serve` (2 HTTP workers, 2 job workers, the scheduler of its job
supervisor), with the time given by a test clock (SCHEDULE_TEST_CLOCK: a file the
scheduler reads every 50 ms), so a sample is not a real minute:

1. start accuracy: one `* * * * *` script; 50 times, the clock is set to the next
   minute and the real time noted; the job's `created_at` (scheduler: claim and queue)
   and `started_at` (a job worker took it) against that moment; SQLite and Redis;
2. 1,000 `* * * * *` scripts in the folder: how long the scheduler takes to find them
   (a runner imports each), then the clock is set to the next minute: the delay until
   the last of the 1,000 jobs is created and started, and the scheduler process's CPU
   over that real minute (scans every 2 s, 1,000 claims and jobs);
3. recovery: the scheduler kills itself right after claiming the minute
   (SCHEDULE_TEST_FAULT); how long the job supervisor takes to have a new scheduler
   that knows the schedule, and, once the clock is set past the claim's lease, how long
   until the job is created and started; SQLite and Redis.

The clock stands in for waiting: the scheduler's path from "the time has come" to the
job is the same as with the system clock (which sleeps until the time instead of
polling a file every 50 ms; polling adds at most 50 ms here). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import descendants, gunicorn, process_name, redis_server, wait_until

SCRIPT = 'SCHEDULE = "* * * * *"\ndef main(request):\n    return "ok"\n'
# A sample a test-clock minute after the last may come before the last run finished:
# without this it would be skipped (SCHEDULE_OVERLAP = False), not measured.
OVERLAPPING = "SCHEDULE_OVERLAP = True\n" + SCRIPT
START = 1796626800.0 - 30  # 2026-12-07 07:00:00 UTC, 30 s before


def set_clock(clock: Path, moment: float) -> None:
    part = clock.with_suffix(".part")
    part.write_text(repr(moment))
    part.replace(clock)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Jobs:
    """The scheduled jobs, read from the store the server writes."""

    def __init__(self, data: Path, redis_url: str | None) -> None:
        self.data, self.redis_url = data, redis_url

    def times(self) -> list[tuple[float, float | None]]:
        """(created_at, started_at) of every scheduled job."""
        if self.redis_url is None:
            with sqlite3.connect(self.data / "jobs.db", timeout=5) as db:
                rows = db.execute(
                    "select created_at, started_at from scriptgate_job where trigger = 'schedule'"
                ).fetchall()
            return [(float(c), None if s is None else float(s)) for c, s in rows]
        import redis

        conn = redis.Redis.from_url(self.redis_url)
        found = []
        for key in conn.scan_iter(match="scriptgate.job.*", count=1000):
            created, started, trigger = conn.hmget(key, ("created_at", "started_at", "trigger"))
            if trigger == b"schedule" and created:
                found.append((float(created), float(started) if started else None))
        return found


def scheduler_pid(server_pid: int) -> int:
    return wait_until(
        lambda: next(
            (p for p in descendants(server_pid) if process_name(p) == "scriptgate-cron"), 0
        ),
        timeout=30,
        what="the scheduler process",
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def found_count(log: Path) -> int:
    if not log.exists():
        return 0
    return log.read_text().count('"message": "schedule found"')


def accuracy(tmp: Path, samples: int, redis_url: str | None) -> dict[str, float]:
    scripts = tmp / "scripts"
    (scripts / "api").mkdir(parents=True)
    (scripts / "api" / "tick.py").write_text(OVERLAPPING)
    clock = tmp / "clock.txt"
    set_clock(clock, START)
    env = {"JOB_WORKERS": "2", "SCHEDULE_TEST_CLOCK": str(clock), "JOB_DATA_DIR": str(tmp / "data")}
    if redis_url:
        env["JOB_BROKER_URL"] = redis_url
    jobs = Jobs(tmp / "data", redis_url)
    created, started = [], []
    with gunicorn(scripts, tmp, workers=2, env=env) as server:
        wait_until(lambda: found_count(server.log_file) >= 1, timeout=60, what="the schedule")
        for n in range(1, samples + 1):
            moment = time.time()
            set_clock(clock, START + 30 + (n - 1) * 60)
            done = wait_until(
                lambda n=n: (t := jobs.times()) and len(t) >= n and all(s for _, s in t) and t,
                timeout=30,
                what=f"scheduled job {n}",
            )
            last = max(done)
            created.append(last[0] - moment)
            started.append((last[1] or 0.0) - moment)
    return {
        "created p50": statistics.median(created),
        "created p99": percentile(created, 0.99),
        "started p50": statistics.median(started),
        "started p99": percentile(started, 0.99),
        "started max": max(started),
    }


def recovery(tmp: Path, samples: int, redis_url: str | None) -> dict[str, float]:
    from service.schedules.store import CLAIM_LEASE_SECONDS

    scripts = tmp / "scripts"
    (scripts / "api").mkdir(parents=True)
    (scripts / "api" / "tick.py").write_text(OVERLAPPING)
    clock, fault = tmp / "clock.txt", tmp / "fault"
    set_clock(clock, START)
    env = {"JOB_WORKERS": "2", "SCHEDULE_TEST_CLOCK": str(clock), "JOB_DATA_DIR": str(tmp / "data")}
    env["SCHEDULE_TEST_FAULT"] = str(fault)
    if redis_url:
        env["JOB_BROKER_URL"] = redis_url
    jobs = Jobs(tmp / "data", redis_url)
    replaced, created, started = [], [], []
    with gunicorn(scripts, tmp, workers=2, env=env) as server:
        wait_until(lambda: found_count(server.log_file) >= 1, timeout=60, what="the schedule")
        for n in range(1, samples + 1):
            fault.write_text("kill claim")
            killed = time.time()
            set_clock(clock, START + 30 + (n - 1) * 60)
            wait_until(lambda n=n: found_count(server.log_file) > n, timeout=60, what="a new one")
            replaced.append(time.time() - killed)
            moment = time.time()
            set_clock(clock, START + 30 + (n - 1) * 60 + CLAIM_LEASE_SECONDS)
            done = wait_until(
                lambda n=n: (t := jobs.times()) and len(t) >= n and all(s for _, s in t) and t,
                timeout=30,
                what=f"recovered job {n}",
            )
            last = max(done)
            created.append(last[0] - moment)
            started.append((last[1] or 0.0) - moment)
    return {
        "replaced p50": statistics.median(replaced),
        "replaced max": max(replaced),
        "created p50": statistics.median(created),
        "created max": max(created),
        "started p50": statistics.median(started),
        "started max": max(started),
    }


def run_recovery(tmp: Path, samples: int) -> None:
    print(f"a killed scheduler's time, {samples} samples (seconds):", flush=True)
    (tmp / "rsqlite").mkdir()
    for key, value in recovery(tmp / "rsqlite", samples, None).items():
        print(f"  SQLite  {key:12} {value:8.3f}", flush=True)
    (tmp / "rredis").mkdir()
    with redis_server(tmp / "rredis") as url:
        (tmp / "rredis" / "run").mkdir()
        for key, value in recovery(tmp / "rredis" / "run", samples, url).items():
            print(f"  Redis   {key:12} {value:8.3f}", flush=True)


def thousand(tmp: Path, count: int) -> dict[str, float]:
    scripts = tmp / "scripts"
    for n in range(count):
        folder = scripts / "api" / f"s{n // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"t{n:04d}.py").write_text(SCRIPT)
    clock = tmp / "clock.txt"
    set_clock(clock, START)
    env = {"JOB_WORKERS": "2", "SCHEDULE_TEST_CLOCK": str(clock), "JOB_DATA_DIR": str(tmp / "data")}
    jobs = Jobs(tmp / "data", None)
    with gunicorn(scripts, tmp, workers=2, env=env) as server:
        began = time.monotonic()
        wait_until(
            lambda: found_count(server.log_file) >= count,
            timeout=900,
            what=f"{count} schedules found",
        )
        discovery = time.monotonic() - began
        pid = scheduler_pid(server.proc.pid)
        time.sleep(3)
        cpu_before, moment = cpu_seconds(pid), time.time()
        set_clock(clock, START + 30)
        done = wait_until(
            lambda: (t := jobs.times()) and len(t) >= count and all(s for _, s in t) and t,
            timeout=300,
            what=f"{count} scheduled jobs started",
        )
        last_created = max(c for c, _ in done) - moment
        last_started = max(s or 0.0 for _, s in done) - moment
        rest = 60 - (time.time() - moment)
        if rest > 0:
            time.sleep(rest)
        cpu_minute = cpu_seconds(pid) - cpu_before
    return {
        "discovery s": discovery,
        "last created s": last_created,
        "last started s": last_started,
        "scheduler CPU s per minute": cpu_minute,
    }


def run_accuracy(tmp: Path, samples: int) -> None:
    print(f"start accuracy, {samples} samples (seconds from the clock's minute):", flush=True)
    (tmp / "sqlite").mkdir()
    for key, value in accuracy(tmp / "sqlite", samples, None).items():
        print(f"  SQLite  {key:12} {value:8.3f}", flush=True)
    (tmp / "redis").mkdir()
    with redis_server(tmp / "redis") as url:
        (tmp / "redis" / "run").mkdir()
        for key, value in accuracy(tmp / "redis" / "run", samples, url).items():
            print(f"  Redis   {key:12} {value:8.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("all", "accuracy", "many", "recovery"), default="all")
    args = parser.parse_args()
    samples, count = (10, 200) if args.quick else (50, 1000)
    with tempfile.TemporaryDirectory(prefix="bench-schedules-") as name:
        tmp = Path(name)
        if args.part in ("all", "accuracy"):
            run_accuracy(tmp, samples)
        if args.part in ("all", "recovery"):
            run_recovery(tmp, 5 if args.quick else 10)  # each kill grows the restart delay
        if args.part in ("all", "many"):
            (tmp / "many").mkdir()
            print(f"{count} schedules due at the same minute (SQLite):", flush=True)
            for key, value in thousand(tmp / "many", count).items():
                print(f"  {key:28} {value:8.3f}")


if __name__ == "__main__":
    main()
