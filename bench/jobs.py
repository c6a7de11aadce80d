"""Jobs: what the 202 path adds to a call, and how fast job workers drain a queue.

    .venv/bin/python bench/jobs.py            # make bench-jobs, about two minutes
    .venv/bin/python bench/jobs.py --quick    # shorter runs, same table

For the embedded SQLite store and for a real redis-server, one `scriptgate serve`
(3 workers, no job workers) answers a no-op script:
1. synchronously and with `Prefer: respond-async`, one connection at a time (wrk):
   the difference of the medians is what queueing a job adds to a call;
2. with `Prefer: respond-async` on 8 connections: how many jobs a server can accept;
3. then `scriptgate jobs --workers 2` starts on the same store and drains every job
   queued so far: jobs per second for a no-op script;
4. single jobs on the idle queue: the wait from 202 to start (pickup);
5. cancelling a running job: from DELETE to `cancelled`, for a script in a Python loop
   and for one blocked in C (its job worker is replaced).
Printed, never asserted: the machine is shared, the figures say what to expect.

    .venv/bin/python bench/jobs.py --live    # live output and dispatch instead

times, for each store, on `scriptgate serve` with 2 job workers: a line a running job
prints reaching a client of /_platform/jobs/<id>/events (the script writes the time it
printed; the client the time it read; one machine, one clock), and a no-op job's
dispatch: 202 to `succeeded` as the record says (created_at to finished_at) and as a
client following its events sees it (request sent to final state read).

    .venv/bin/python bench/jobs.py --history 100000   # the run history instead

fills an SQLite store with that many finished runs (20 callers, 10 scripts, a seventh
failed) and times GET /_platform/jobs on `scriptgate serve` (wrk, 1 connection): a
key's first page, its failed runs, a page deep in the history, every caller's runs
for an ADMIN_API_KEY, one script's runs, retries, and one script's failed runs (its
index, then a filter on each row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_wrk
from bench.procs import gunicorn, jobs_command, redis_server, wait_until
from service.config import Settings
from service.jobs.queue import JobQueue

API_KEY = "bench-jobs-key"
KEY = {"X-API-Key": API_KEY}
ASYNC = {**KEY, "Prefer": "respond-async"}
SCRIPTS = {
    "noop.py": "def main(request):\n    return None\n",
    "tick.py": (
        "import time\nJOB_TIMEOUT = 600\n"
        "def main(request):\n    while True:\n        time.sleep(0.05)\n"
    ),
    "stuck.py": "import time\nJOB_TIMEOUT = 600\ndef main(request):\n    time.sleep(600)\n",
    "printer.py": (
        "import time\nJOB_TIMEOUT = 600\n"
        "def main(request):\n"
        "    for n in range(int(request.args['lines'])):\n"
        "        print(f'{n} {time.time():.6f}', flush=True)\n"
        "        time.sleep(0.1)\n"
    ),
}


def write_scripts(root: Path) -> Path:
    (root / "api").mkdir(parents=True)
    for name, source in SCRIPTS.items():
        (root / "api" / name).write_text(source)
    return root


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> dict:
    result = run_wrk(url, headers, seconds=seconds, connections=connections, threads=1)
    return {
        "rps": result.requests_per_s,
        "p50": result.p50_ms,
        "p99": result.p99_ms,
        "errors": result.errors,
    }


def drain(queue: JobQueue, timeout: float) -> tuple[int, float]:
    """(jobs drained, seconds) from the first job taken to an empty queue."""
    total = queue.store.stats().queued
    wait_until(
        lambda: queue.store.stats().queued < total,
        timeout=60,
        interval=0.01,
        what="the job workers to start",
    )
    started = time.monotonic()
    wait_until(
        lambda: (s := queue.store.stats()).queued == 0 and s.running == 0,
        timeout=timeout,
        interval=0.02,
        what="the queue to drain",
    )
    return total, time.monotonic() - started


def job_state(url: str, job_id: str) -> dict:
    return requests.get(f"{url}/_platform/jobs/{job_id}", headers=KEY, timeout=10).json()


def reached(url: str, job_id: str, state: str, interval: float) -> dict:
    return wait_until(
        lambda: (found := job_state(url, job_id))["state"] == state and found,
        timeout=30,
        interval=interval,
        what=f"job {job_id} to be {state}",
    )


def submit(url: str, script: str) -> str:
    response = requests.get(f"{url}/api/{script}", headers=ASYNC, timeout=10)
    response.raise_for_status()
    return response.json()["id"]


def pickup_ms(url: str, rounds: int) -> list[float]:
    """202 to start, for single jobs on an idle queue (the SQLite poll idles at 0.5 s)."""
    waits = []
    for _ in range(rounds):
        time.sleep(1.0)  # let the job workers' poll back off to idle, as in quiet hours
        done = reached(url, submit(url, "noop.py"), "succeeded", 0.02)
        waits.append(_ms(done["created_at"], done["started_at"]))
    return waits


def cancel_ms(url: str, script: str, rounds: int) -> list[float]:
    """DELETE of a running job to its `cancelled` state."""
    took = []
    for _ in range(rounds):
        job_id = submit(url, script)
        reached(url, job_id, "running", 0.02)
        started = time.monotonic()
        requests.delete(f"{url}/_platform/jobs/{job_id}", headers=KEY, timeout=10)
        reached(url, job_id, "cancelled", 0.01)
        took.append((time.monotonic() - started) * 1000)
    return took


def _ms(start: str, end: str) -> float:
    from datetime import datetime

    parse = datetime.fromisoformat
    return (
        parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))
    ).total_seconds() * 1000


def bench_store(name: str, tmp: Path, broker: str | None, seconds: int, rounds: int) -> dict:
    scripts = write_scripts(tmp / "scripts")
    env = {"API_KEY": API_KEY, "JOB_WORKERS": "0"}
    extra = {"API_KEY": API_KEY}
    if broker:
        env["JOB_BROKER_URL"] = extra["JOB_BROKER_URL"] = broker
    settings = Settings(scripts_dir=scripts, job_data_dir=tmp / "data", job_broker_url=broker)
    out: dict = {"store": name}
    with gunicorn(scripts, tmp, workers=3, env=env) as server:
        url = server.url + "/api/noop.py"
        for warm in range(20):  # import the script in every worker, open the store
            requests.get(url, headers=ASYNC if warm % 2 else KEY, timeout=10)
        out["sync"] = wrk(url, KEY, seconds, 1)
        out["async"] = wrk(url, ASYNC, seconds, 1)
        out["async_8"] = wrk(url, ASYNC, seconds, 8)
        queue = JobQueue(replace(settings))
        with jobs_command(scripts, tmp, extra, workers=2):
            out["drained"], out["drain_s"] = drain(queue, timeout=600)
            out["pickup_ms"] = pickup_ms(server.url, rounds)
            out["cancel_loop_ms"] = cancel_ms(server.url, "tick.py", rounds)
            out["cancel_c_ms"] = cancel_ms(server.url, "stuck.py", max(1, rounds // 2))
        queue.close()
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def print_table(results: list[dict]) -> None:
    rows = [
        (
            "sync call, 1 conn: p50 / p99 ms",
            lambda r: f"{r['sync']['p50']:.2f} / {r['sync']['p99']:.2f}",
        ),
        (
            "202 path, 1 conn: p50 / p99 ms",
            lambda r: f"{r['async']['p50']:.2f} / {r['async']['p99']:.2f}",
        ),
        ("added by queueing (p50) ms", lambda r: f"{r['async']['p50'] - r['sync']['p50']:+.2f}"),
        ("sync call, 1 conn: calls/s", lambda r: f"{r['sync']['rps']:.0f}"),
        ("202 path, 1 conn: jobs queued/s", lambda r: f"{r['async']['rps']:.0f}"),
        ("202 path, 8 conns: jobs queued/s", lambda r: f"{r['async_8']['rps']:.0f}"),
        ("no-op jobs drained (2 job workers)", lambda r: f"{r['drained']}"),
        ("  drain rate: jobs/s", lambda r: f"{r['drained'] / r['drain_s']:.0f}"),
        ("pickup on an idle queue: median ms", lambda r: f"{median(r['pickup_ms'])}"),
        ("cancel, Python loop: median ms", lambda r: f"{median(r['cancel_loop_ms'])}"),
        ("cancel, blocked in C: median ms", lambda r: f"{median(r['cancel_c_ms'])}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"\n{'':{width}}  " + "  ".join(f"{r['store']:>14}" for r in results))
    for label, cell in rows:
        print(f"{label:{width}}  " + "  ".join(f"{cell(r):>14}" for r in results))
    errors = {r["store"]: r["async_8"]["errors"] + r["async"]["errors"] for r in results}
    print(f"\nnon-2xx answers or socket errors during the 202 runs: {errors}")


HISTORY_CALLERS, HISTORY_SCRIPTS = 20, 10
ADMIN_KEY = "bench-jobs-admin-key"


def fill_history(data_dir: Path, scripts: Path, count: int) -> tuple[float, str]:
    """`count` finished runs, one store write each (as the job workers write them);
    returns the (created_at, id) of the run in the middle, for a deep page."""
    from service.jobs.http import JOB_ID
    from service.jobs.store import FAILED, SUCCEEDED, Ending, Job

    queue = JobQueue(Settings(scripts_dir=scripts, job_data_dir=data_dir))
    store = queue.store
    start = time.time() - count  # one run a second, up to now
    middle: tuple[float, str] = (0.0, "")
    for n in range(count):
        job_id = f"{n:032d}"
        assert JOB_ID.fullmatch(job_id)
        created = start + n
        job = Job(
            id=job_id,
            state="queued",
            zone="api",
            script=f"s{n % HISTORY_SCRIPTS}.py",
            method="GET",
            path=f"/api/s{n % HISTORY_SCRIPTS}.py",
            owner="",
            trace_id="0" * 32,
            traceparent="",
            created_at=created,
            caller=f"api-key-{n % HISTORY_CALLERS + 1}",
        )
        store.create(job, b"{}", created)
        store.claim(job_id, "bench:1", created + 0.1)
        state = FAILED if n % 7 == 0 else SUCCEEDED  # a seventh failed, every caller some
        store.finish(job_id, Ending(state, created + 0.5, 10 * 86400.0))
        if n == count // 2:
            middle = (created, job_id)
    queue.close()
    return middle


def history_job(n: int, start: float) -> Any:
    """The n-th finished run of a bulk-filled history (as fill_history writes them)."""
    from service.jobs.store import FAILED, SUCCEEDED, Job

    created = start + n
    return Job(
        id=f"{n:032d}",
        state=FAILED if n % 7 == 0 else SUCCEEDED,
        zone="api",
        script=f"s{n % HISTORY_SCRIPTS}.py",
        method="GET",
        path=f"/api/s{n % HISTORY_SCRIPTS}.py",
        owner="",
        trace_id="0" * 32,
        traceparent="",
        created_at=created,
        started_at=created + 0.1,
        finished_at=created + 0.5,
        expires_at=created + 0.5 + 30 * 86400.0,
        worker="bench:1",
        result_status=200,
        result_headers="[]",
        caller=f"api-key-{n % HISTORY_CALLERS + 1}",
    )


def bulk_history(settings: Settings, count: int) -> tuple[float, str]:
    """`count` finished runs written in bulk (a million through the job workers' own
    writes would take an hour here): SQLite rows in large transactions, Redis hashes and
    index entries in pipelines. The same rows and indexes the stores write."""
    from service.jobs import redis_store, sqlite_store
    from service.jobs.store import COLUMNS

    queue = JobQueue(settings)
    store = queue.store
    start = time.time() - count
    batch = 20_000
    for first in range(0, count, batch):
        jobs = [history_job(n, start) for n in range(first, min(count, first + batch))]
        if isinstance(store, sqlite_store.SqliteJobStore):
            marks = ", ".join("?" * len(COLUMNS))
            sql = f"insert into {sqlite_store.TABLE} ({', '.join(COLUMNS)}) values ({marks})"
            with store.storage.db(commit=True) as cursor:
                cursor.executemany(sql, [tuple(getattr(j, c) for c in COLUMNS) for j in jobs])
        else:
            pipe = store.conn.pipeline(transaction=False)
            for j in jobs:
                record = {c: "" if getattr(j, c) is None else str(getattr(j, c)) for c in COLUMNS}
                record["cancel_requested"] = "0"
                pipe.hset(redis_store.PREFIX + j.id, mapping=record)
                pipe.zadd(redis_store.CREATED_SET, {j.id: j.created_at})
                pipe.zadd(redis_store.CALLER_SET + j.caller, {j.id: j.created_at})
            pipe.execute()
    queue.close()
    middle = history_job(count // 2, start)
    return middle.created_at, middle.id


def bench_history(
    tmp: Path, count: int, seconds: int, broker: str | None = None
) -> dict[str, dict]:
    from service.jobs.history import encode_cursor

    scripts = write_scripts(tmp / "scripts")
    began = time.monotonic()
    settings = Settings(scripts_dir=scripts, job_data_dir=tmp / "data", job_broker_url=broker)
    if count > 200_000 or broker:
        middle = bulk_history(settings, count)
    else:
        middle = fill_history(tmp / "data", scripts, count)
    print(f"{count} runs stored in {time.monotonic() - began:.0f} s", file=sys.stderr)
    keys = ",".join(f"bench-history-key-{n}" for n in range(1, HISTORY_CALLERS + 1))
    env = {
        "API_KEY": keys,
        "ADMIN_API_KEY": ADMIN_KEY,
        "JOB_WORKERS": "0",
        "JOB_DATA_DIR": str(tmp / "data"),
        "JOB_RETENTION": "30d",
        **({"JOB_BROKER_URL": broker} if broker else {}),
    }
    own = {"X-API-Key": "bench-history-key-1"}
    admin = {"X-Admin-Key": ADMIN_KEY}
    cases = {
        "a key's first page (50)": ("", own),
        "a key's failed runs": ("?state=failed", own),
        "a key, page deep in the history": (f"?cursor={encode_cursor(middle)}", own),
        "every caller (ADMIN_API_KEY)": ("", admin),
        "every caller, one script": ("?script=/api/s3.py", admin),
        "every caller, 200 a page": ("?limit=200", admin),
        "every caller, retries (none stored)": ("?trigger=retry", admin),
        "one script's failed runs (index, then filter)": ("?script=/api/s3.py&state=failed", admin),
    }
    out = {}
    with gunicorn(scripts, tmp, workers=3, env=env) as server:
        for label, (query, headers) in cases.items():
            url = server.url + "/_platform/jobs" + query
            first = requests.get(url, headers=headers, timeout=60)
            first.raise_for_status()
            out[label] = {**wrk(url, headers, seconds, 1), "jobs": len(first.json()["jobs"])}
    return out


def print_history(count: int, results: dict[str, dict], store: str = "SQLite") -> None:
    width = max(len(label) for label in results)
    print(f"\nGET /_platform/jobs, {count} runs stored ({store}), 1 connection")
    print(f"{'':{width}}  {'jobs':>5}  {'p50 ms':>8}  {'p99 ms':>8}  {'req/s':>7}")
    for label, r in results.items():
        figures = f"{r['p50']:>8.2f}  {r['p99']:>8.2f}  {r['rps']:>7.0f}"
        print(f"{label:{width}}  {r['jobs']:>5}  {figures}")


def sse_events(response: requests.Response):
    """(event, data) pairs of an SSE response as they arrive, with their arrival time."""
    buffer = ""
    for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "event" in fields:
                yield time.time(), fields["event"], json.loads(fields["data"])


def live_latency_ms(url: str, lines: int) -> list[float]:
    """Printed-to-read delay of each line of a printing job, read from its events."""
    job_id = requests.get(
        f"{url}/api/printer.py", params={"lines": lines}, headers=ASYNC, timeout=10
    ).json()["id"]
    delays: list[float] = []
    for _ in range(5):  # a response lives JOB_EVENTS_SECONDS; resume after it (rarely)
        last = None
        with requests.get(
            f"{url}/_platform/jobs/{job_id}/events", headers=KEY, stream=True, timeout=30
        ) as response:
            for arrived, event, data in sse_events(response):
                if event == "log":
                    printed = float(data["message"].split()[1])
                    delays.append((arrived - printed) * 1000)
                if event == "state" and data["state"] not in ("queued", "running"):
                    return delays
                last = event
        if last is None:
            break
    return delays


def dispatch_ms(url: str, rounds: int) -> tuple[list[float], list[float]]:
    """No-op jobs one after another: (record's 202 to succeeded, client's)."""
    recorded, seen = [], []
    for _ in range(rounds):
        sent = time.time()
        job_id = submit(url, "noop.py")
        with requests.get(
            f"{url}/_platform/jobs/{job_id}/events", headers=KEY, stream=True, timeout=30
        ) as response:
            for arrived, event, data in sse_events(response):
                if event == "state" and data["state"] == "succeeded":
                    seen.append((arrived - sent) * 1000)
                    break
        done = job_state(url, job_id)
        recorded.append(_ms(done["created_at"], done["finished_at"]))
    return recorded, seen


def bench_live(name: str, tmp: Path, broker: str | None, lines: int, rounds: int) -> dict:
    scripts = write_scripts(tmp / "scripts")
    env = {"API_KEY": API_KEY, "JOB_WORKERS": "2"}
    if broker:
        env["JOB_BROKER_URL"] = broker
    with gunicorn(scripts, tmp, workers=3, env=env) as server:
        for _ in range(10):  # warm: the script imported, the store open in each worker
            reached(server.url, submit(server.url, "noop.py"), "succeeded", 0.02)
        latency = live_latency_ms(server.url, lines)
        recorded, seen = dispatch_ms(server.url, rounds)
    return {"store": name, "latency": latency, "recorded": recorded, "seen": seen}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def print_live(results: list[dict]) -> None:
    print("\nlive output and dispatch, `scriptgate serve` with 2 job workers")
    print(f"{'':52}  {'n':>5}  {'p50 ms':>8}  {'p99 ms':>8}")
    for r in results:
        for label, values in (
            ("printed line -> SSE client", r["latency"]),
            ("no-op job, 202 -> succeeded (record)", r["recorded"]),
            ("no-op job, request -> final state (client)", r["seen"]),
        ):
            row = f"{r['store'] + ': ' + label:52}  {len(values):>5}"
            print(f"{row}  {percentile(values, 0.5):>8}  {percentile(values, 0.99):>8}")
    print("Windmill publishes 12 ms for a no-op job on dedicated workers.")


def on_each_store(run: Callable[[str, Path, str | None], Any]) -> list[Any]:
    """`run(name, folder, redis_url)` on the embedded SQLite store, then on a real
    redis-server, each in a fresh folder."""
    found = []
    with tempfile.TemporaryDirectory(prefix="scriptgate-bench-jobs-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "sqlite").mkdir()
        found.append(run("SQLite", tmp / "sqlite", None))
        (tmp / "redis").mkdir()
        with redis_server(tmp / "redis") as url:
            found.append(run("Redis", tmp / "redis", url))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s wrk runs, 3 rounds")
    parser.add_argument("--history", type=int, metavar="N", help="time the run history")
    parser.add_argument("--live", action="store_true", help="live output and dispatch")
    parser.add_argument("--redis", action="store_true", help="--history in a redis-server")
    args = parser.parse_args()
    seconds, rounds = (2, 3) if args.quick else (5, 6)
    if args.live:
        lines, jobs = (50, 50) if args.quick else (300, 300)
        print_live(on_each_store(lambda *store: bench_live(*store, lines, jobs)))
        return 0
    if args.history:
        with tempfile.TemporaryDirectory(prefix="scriptgate-bench-history-") as tmp_dir:
            tmp = Path(tmp_dir)
            if args.redis:
                (tmp / "redis").mkdir()
                with redis_server(tmp / "redis") as url:
                    found = bench_history(tmp, args.history, seconds, url)
                print_history(args.history, found, "Redis")
            else:
                print_history(args.history, bench_history(tmp, args.history, seconds))
        return 0
    print_table(on_each_store(lambda *store: bench_store(*store, seconds, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
