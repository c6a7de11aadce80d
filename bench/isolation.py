"""What isolation costs: scripts in runner processes (now) against threads in the worker
(before, commit ba5cfd7), measured side by side in one run.

    .venv/bin/python bench/isolation.py            # make bench-isolation; a few minutes
    .venv/bin/python bench/isolation.py --smoke    # seconds; proves the harness

The "before" contender is the same venv importing `service` from commit ba5cfd7's tree,
exported by `git archive` into the run's temporary folder (nothing is copied into this
tree, nothing is registered in the repository, and the folder goes with the run), so
both designs serve the same script body from the same bench harness:

- in process (bench/inproc.py): interleaved rounds of each design's loop; a call's extra
  µs is the paired difference of 1/req/s per round, CPU counted with the runner's;
- instructions (bench/instructions.py's callgrind, following children): the worker's
  and the runner's per call, summed;
- over HTTP (wrk, bench/run.py's rows): `make bench` has a "before" row; this module's
  own run measures the assembly and both designs the same way;
- memory: 24 different scripts waiting at once on each design; the PSS of every process
  (/proc/PID/smaps_rollup), and the tree's growth over its idle self per waiting call;
- a cold call (the first of a script no runner has imported) against a warm one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import instructions
from bench.procs import REPO, child_pids, free_port, scriptgate_argv, wait_until
from bench.report import Goal
from bench.servers import BENCH, Server, http_get, launch, stop, wait_ready

BEFORE_COMMIT = "ba5cfd7"  # the last commit with scripts on threads in the worker
API_KEY = "bench-api-key"
HEADERS = {"X-API-Key": API_KEY}
HELLO = "/api/hello.py"
RELEASE = "release"
WAIT_SCRIPT = '''\
"""Waits until the bench releases it: one of the memory test's {count} scripts."""

import os
import time
from pathlib import Path

FOLDER = Path({folder!r})


def main(request):
    mark = FOLDER / "{name}-{{}}".format(os.getpid())
    mark.touch()
    try:
        give_up = time.monotonic() + 20
        while not (FOLDER / "release").exists() and time.monotonic() < give_up:
            time.sleep(0.02)
        return {{"waited": "{name}"}}
    finally:
        mark.unlink()
'''
COLD_SCRIPT = '''\
"""A fresh script that imports only the standard library (the cold-call test)."""

import datetime
import json


def main(request):
    return {{"n": {n}, "at": datetime.date(2026, 12, 6).isoformat(), "j": json.dumps([{n}])}}
'''


@dataclass(frozen=True)
class Sizes:
    calls: instructions.Sizes  # in process and callgrind
    waiting: int  # scripts waiting at once, one call each
    workers: int  # gunicorn workers of the memory servers (8 threads each)
    cold: int  # fresh scripts called once each
    warm: int  # calls of one warm script
    http_rounds: int
    http_seconds: int
    callgrind: bool  # some 50 s even for a few calls: not in a smoke run


FULL = Sizes(instructions.Sizes(200, 60, 7, 500, ()), 24, 3, 100, 100, 5, 3, True)
SMOKE = Sizes(instructions.Sizes(10, 10, 1, 30, ()), 4, 1, 5, 5, 0, 0, False)


def export_before(dest: Path) -> Path:
    """Commit ba5cfd7's `service` package under `dest` (git archive, no worktree)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", BEFORE_COMMIT, "service"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def contenders(tree: Path) -> tuple[instructions.Contender, instructions.Contender]:
    """(before, after): the same Scriptgate settings, threads against runners."""
    before = replace(
        instructions.SCRIPTGATE,
        key="before",
        label=f"Scriptgate before runners ({BEFORE_COMMIT}, threads)",
        tree=str(tree),
    )
    after = replace(instructions.SCRIPTGATE, label="Scriptgate with runners (now)")
    return before, after


def in_process(sizes: instructions.Sizes, tmp: Path, tree: Path, callgrind: bool) -> dict:
    """Interleaved rounds of both designs' loops; then each under callgrind, two at once."""
    before, after = contenders(tree)
    rounds: dict[str, list[dict]] = {"before": [], "after": []}
    sink = "http://127.0.0.1:9/unused"  # spans are sampled out: nothing is sent
    with instructions.loopers((before, after), tmp, sink, sizes.warmup) as running:
        for _ in range(sizes.rounds):
            for looper, key in zip(running, rounds, strict=True):
                wall, cpu = looper.loop(sizes.per_round)
                rounds[key].append(
                    {"us": wall / sizes.per_round * 1e6, "cpu_us": cpu / sizes.per_round * 1e6}
                )
    counts = [None, None]
    if callgrind:
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = list(
                pool.map(lambda c: instructions.instructions(c, sizes, tmp, sink), (before, after))
            )
    out: dict = {}
    for key, counted in zip(("before", "after"), counts, strict=True):
        us = statistics.median(r["us"] for r in rounds[key])
        out[key] = {
            "requests_per_s": round(1e6 / us),
            "us_per_call": round(us, 1),
            "cpu_us": round(statistics.median(r["cpu_us"] for r in rounds[key]), 1),
            **_k_instructions(counted),
        }
    pairs = zip(rounds["after"], rounds["before"], strict=True)
    extra = [(a["us"] - b["us"], a["cpu_us"] - b["cpu_us"]) for a, b in pairs]
    out["extra_us"] = round(statistics.median(e[0] for e in extra), 1)
    out["extra_cpu_us"] = round(statistics.median(e[1] for e in extra), 1)
    if callgrind:
        out["extra_k_instructions"] = round(
            out["after"]["k_instructions"] - out["before"]["k_instructions"], 1
        )
    out["rounds"] = sizes.rounds
    return out


def _k_instructions(counted: instructions.Counted | None) -> dict:
    if counted is None:
        return {}
    wake = counted.zygote_wake
    return {
        "k_instructions": round(counted.total / 1000, 1),
        "k_worker": round(counted.worker / 1000, 1),
        "k_runner": round(counted.runner / 1000, 1),
        "k_zygote_wake": None if wake is None else round(wake / 1000, 1),
    }


# -- servers -----------------------------------------------------------------------------
def start_scriptgate(
    name: str, tmp: Path, workers: int, scripts: Path, tree: Path | None = None
) -> Server:
    """`scriptgate serve` (its default: gthread x 8) on a free port; `tree` makes it the
    "before" design (PYTHONPATH: its `service` shadows this checkout's)."""
    port = free_port()
    env = {
        "API_KEY": API_KEY,
        "API_TRUSTED_IPS": "127.0.0.1/32",
        "LOG_FILE": str(tmp / f"{name}.log"),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix=f"{name}-metrics-", dir=tmp),
    }
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    argv = scriptgate_argv(port, workers, scripts)
    return launch(name, argv, port, env, tmp, workers, HEADERS)


@contextlib.contextmanager
def serving(
    name: str, tmp: Path, workers: int, scripts: Path, tree: Path | None
) -> Iterator[Server]:
    server = start_scriptgate(name, tmp, workers, scripts, tree)
    try:
        # Not /_platform/health: it has every script described, which starts runners.
        wait_ready(server, "/_platform/routes")
        yield server
    finally:
        stop(server)


def _tree(pid: int) -> dict[int, int]:
    """Every process below `pid`, with its depth (1: workers, 2: zygotes, 3: runners)."""
    depths: dict[int, int] = {}
    todo = [(pid, 0)]
    while todo:
        parent, depth = todo.pop()
        for child in child_pids(parent):
            depths[child] = depth + 1
            todo.append((child, depth + 1))
    return depths


def pss_mb(pid: int) -> float | None:
    """Proportional set size: a page shared by n processes counts 1/n in each."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


ROLES = {0: "master", 1: "worker", 2: "zygote", 3: "runner"}


def snapshot(server: Server) -> dict:
    """PSS of every process of the server, by role, and their sum."""
    assert server.proc is not None
    master = server.proc.pid
    found = {master: 0, **_tree(master)}
    by_role: dict[str, list[float]] = {}
    for pid, depth in found.items():
        size = pss_mb(pid)
        if size is not None:
            by_role.setdefault(ROLES.get(depth, "runner child"), []).append(round(size, 1))
    total = sum(s for sizes in by_role.values() for s in sizes)
    return {"pss_mb": round(total, 1), "by_role": by_role}


def memory(tmp: Path, count: int, workers: int, tree: Path | None, name: str) -> dict:
    """`count` different scripts waiting at once; PSS idle, then while they wait."""
    scripts, folder = tmp / f"{name}-scripts", tmp / f"{name}-waiting"
    (scripts / "api").mkdir(parents=True)
    folder.mkdir()
    for i in range(count):
        body = WAIT_SCRIPT.format(count=count, folder=str(folder), name=f"w{i:02d}")
        (scripts / "api" / f"w{i:02d}.py").write_text(body)
    with serving(name, tmp, workers, scripts, tree) as server:
        idle = snapshot(server)
        with ThreadPoolExecutor(max_workers=count) as pool:
            answers = [
                pool.submit(http_get, server.port, f"/api/w{i:02d}.py", HEADERS, 60)
                for i in range(count)
            ]
            try:
                wait_until(
                    lambda: sum(1 for p in folder.iterdir() if p.name != RELEASE) >= count,
                    timeout=60,
                    what=f"{count} scripts waiting",
                )
                held = snapshot(server)
            finally:
                (folder / RELEASE).touch()
            statuses = [future.result()[0] for future in answers]
    return {
        "waiting": count,
        "answered": sum(1 for s in statuses if s == 200),
        "idle": idle,
        "holding": held,
        "per_call_mb": round((held["pss_mb"] - idle["pss_mb"]) / count, 2),
    }


def cold_and_warm(tmp: Path, cold: int, warm: int, tree: Path | None, name: str) -> dict:
    """Client-seen ms of the first call of `cold` fresh scripts (each written just before
    its call, so nothing can have imported it), and of `warm` calls of one of them."""
    scripts = tmp / f"{name}-cold"
    (scripts / "api").mkdir(parents=True)
    (scripts / "api" / "hello.py").write_text((BENCH / "scripts/api/hello.py").read_text())
    (scripts / "_lib").mkdir()
    (scripts / "_lib" / "greeting.py").write_text((BENCH / "scripts/_lib/greeting.py").read_text())
    with serving(name, tmp, 1, scripts, tree) as server:
        for _ in range(3):  # the worker's first calls start its zygote: not a cold call
            _timed(server, HELLO)
        first = []
        for n in range(cold):
            (scripts / "api" / f"c{n:03d}.py").write_text(COLD_SCRIPT.format(n=n))
            first.append(_timed(server, f"/api/c{n:03d}.py"))
        again = [_timed(server, "/api/c000.py") for _ in range(warm)]
    return {"cold": _percentiles(first), "warm": _percentiles(again)}


def _timed(server: Server, path: str) -> float:
    started = time.perf_counter()
    status, _, body = server.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status} {body[:200]!r}")
    return elapsed


def _percentiles(ms: list[float]) -> dict:
    ordered = sorted(ms)
    rank = max(0, -(-len(ordered) * 99 // 100) - 1)  # nearest rank
    return {
        "calls": len(ms),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[rank], 2),
        "max_ms": round(ordered[-1], 2),
    }


def http(tmp: Path, tree: Path, rounds: int, seconds: int, say: Callable[[str], None]) -> dict:
    """wrk on the assembly and both designs, interleaved rounds as bench/run.py does."""
    from bench import report, run  # run.py imports this module: only when run standalone

    start = {c.key: c.start for c in run.CONTENDERS}
    starters = {
        "assembly": start[report.ASSEMBLY],
        "before": before_contender(tree),
        "after": start[report.SCRIPTGATE],
    }
    servers: dict[str, Server] = {}
    out: dict = {key: [] for key in starters}
    try:
        for key, start in starters.items():
            servers[key] = start(tmp, 2)
        for server in servers.values():
            wait_ready(server, run.TARGET)
            run.verify(server)
        for number in range(rounds):
            for key, server in servers.items():
                row = run.measure_round(server, seconds, 8, 1)
                out[key].append(row)
                say(f"  round {number + 1} {key:<10} {row['requests_per_s']:>8.0f} req/s")
    finally:
        for server in servers.values():
            stop(server)
    return {
        key: {
            "requests_per_s": round(statistics.median(r["requests_per_s"] for r in rows)),
            "cpu_us_per_request": round(statistics.median(r["cpu_us_per_request"] for r in rows)),
            "vs_assembly": round(
                statistics.median(
                    r["requests_per_s"] / a["requests_per_s"]
                    for r, a in zip(rows, out["assembly"], strict=True)
                ),
                2,
            ),
        }
        for key, rows in out.items()
    }


def before_contender(tree: Path | None = None) -> Callable[[Path, int], Server]:
    """bench/run.py's "before" row: `scriptgate serve` from commit ba5cfd7, on the same
    settings as the Scriptgate row (its tree exported into the run's folder if not given)."""

    def start(tmp: Path, workers: int) -> Server:
        source = tree or export_before(tmp / "before-tree")
        port = free_port()
        env = {
            "API_KEY": API_KEY,
            "ADMIN_API_KEY": "bench-admin-key",
            "API_TRUSTED_IPS": "127.0.0.1/32",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            "LOG_FILE": str(tmp / "before.log"),
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="before-metrics-", dir=tmp),
            "PYTHONPATH": str(source),
        }
        argv = scriptgate_argv(port, workers, BENCH / "scripts")
        return launch("scriptgate-before", argv, port, env, tmp, workers, HEADERS)

    return start


def measure(sizes: Sizes, tmp: Path, say: Callable[[str], None], with_http: bool) -> dict:
    tree = export_before(tmp / "before-tree")
    say(f"isolation: in process and callgrind, before ({BEFORE_COMMIT}) and after")
    results: dict = {"before_commit": BEFORE_COMMIT}
    results["inproc"] = in_process(sizes.calls, tmp / "inproc", tree, sizes.callgrind)
    say(f"isolation: {sizes.waiting} scripts waiting at once, before and after")
    results["memory"] = {
        "after": memory(tmp, sizes.waiting, sizes.workers, None, "mem-after"),
        "before": memory(tmp, sizes.waiting, sizes.workers, tree, "mem-before"),
    }
    say(f"isolation: {sizes.cold} cold calls and {sizes.warm} warm ones, before and after")
    results["latency"] = {
        "after": cold_and_warm(tmp, sizes.cold, sizes.warm, None, "cold-after"),
        "before": cold_and_warm(tmp, sizes.cold, sizes.warm, tree, "cold-before"),
    }
    if with_http and sizes.http_rounds:
        say("isolation: wrk, the assembly and both designs")
        results["http"] = http(tmp, tree, sizes.http_rounds, sizes.http_seconds, say)
    return results


# -- report ------------------------------------------------------------------------------
def _http_after(r: dict) -> float | None:
    """Over HTTP: the Scriptgate row of make bench, or this module's own wrk rounds."""
    if "contenders" in r:
        return r["contenders"]["scriptgate"]["median"]["vs_assembly"]
    return r["isolation"]["http"]["after"]["vs_assembly"]


def goals() -> list[Goal]:
    """Judged on a results dict holding this module's output under "isolation"."""
    iso: Callable[[dict], dict] = lambda r: r["isolation"]  # noqa: E731
    return [
        Goal(
            "isolation: <= 150 us more per hello call than threads (in process)",
            lambda r: iso(r)["inproc"]["extra_us"],
            150.0,
            False,
            "us",
        ),
        Goal(
            "isolation: <= 300 k more instructions per call than threads",
            lambda r: iso(r)["inproc"]["extra_k_instructions"],
            300.0,
            False,
            "k",
        ),
        Goal(
            "isolation: runners >= 0.75x the assembly's req/s over HTTP",
            _http_after,
            0.75,
            True,
            "x",
        ),
        Goal(
            "isolation: <= 15 MB PSS per waiting script over idle",
            lambda r: iso(r)["memory"]["after"]["per_call_mb"],
            15.0,
            False,
            "MB",
        ),
        Goal(
            "isolation: cold call p99 < 50 ms (stdlib-only script)",
            lambda r: iso(r)["latency"]["after"]["cold"]["p99_ms"],
            50.0,
            False,
            "ms",
        ),
    ]


def text(iso: dict) -> str:
    inproc = iso["inproc"]
    lines = [
        f"what isolation costs: runner processes (now) against threads ({iso['before_commit']})",
        f"  in process (median of {inproc['rounds']} interleaved rounds) and callgrind:",
        f"  {'design':<10}{'req/s':>8}{'µs/call':>9}{'CPU µs':>8}{'k instr':>9}"
        f"{'worker':>9}{'runner':>9}",
    ]
    for key in ("before", "after"):
        row = inproc[key]
        counts = "".join(
            f"{row[k]:>9,.0f}" if k in row else f"{'-':>9}"
            for k in ("k_instructions", "k_worker", "k_runner")
        )
        lines.append(
            f"  {key:<10}{row['requests_per_s']:>8,}{row['us_per_call']:>9.1f}"
            f"{row['cpu_us']:>8.0f}{counts}"
        )
    extra_k = inproc.get("extra_k_instructions")
    lines.append(
        f"  after - before: {inproc['extra_us']:+.1f} µs per call (paired by round), "
        f"{inproc['extra_cpu_us']:+.1f} µs CPU, "
        + ("not counted (smoke)" if extra_k is None else f"{extra_k:+,.0f} k instr")
    )
    wake = inproc["after"].get("k_zygote_wake")
    if wake is not None:
        lines.append(f"  the zygote wakes every 0.5 s, not per call: {wake:,.0f} k instr a wake")
    if "http" in iso:
        lines.append("  over HTTP (wrk, 2 workers, 8 connections; median of rounds):")
        for key, row in iso["http"].items():
            lines.append(
                f"  {key:<10}{row['requests_per_s']:>8,} req/s {row['cpu_us_per_request']:>6} "
                f"µs CPU/req  {row['vs_assembly']:.2f}x the assembly"
            )
    for key in ("before", "after"):
        mem = iso["memory"][key]
        held = mem["holding"]["by_role"]
        roles = ", ".join(
            f"{role} {' '.join(f'{s:.1f}' for s in sorted(sizes))}"
            for role, sizes in sorted(held.items())
        )
        lines.append(
            f"  memory, {key}: {mem['answered']}/{mem['waiting']} answered; PSS idle "
            f"{mem['idle']['pss_mb']:.1f} MB, holding {mem['holding']['pss_mb']:.1f} MB: "
            f"{mem['per_call_mb']:.2f} MB per waiting call"
        )
        lines.append(f"    PSS MB while holding, by process: {roles}")
    for key in ("before", "after"):
        lat = iso["latency"][key]
        cold, warm = lat["cold"], lat["warm"]
        lines.append(
            f"  {key}: cold call p50 {cold['p50_ms']:.1f} ms, p99 {cold['p99_ms']:.1f} ms "
            f"(max {cold['max_ms']:.1f}, {cold['calls']} scripts); warm p50 "
            f"{warm['p50_ms']:.2f} ms, p99 {warm['p99_ms']:.2f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.report import goals_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    from bench.run import machine

    host = machine()
    with tempfile.TemporaryDirectory(prefix="scriptgate-isolation-") as tmp:
        results = measure(SMOKE if args.smoke else FULL, Path(tmp), say, with_http=True)
    results["machine"] = {**host, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    print(
        f"{host['date']}  {host['cores']} cores  {host['cpu']}  Python {host['python']}  at "
        f"{host['scriptgate_commit']}; load average {' '.join(host['loadavg_before'])} before"
    )
    print(text(results))
    print(goals_table([g.judge({"isolation": results}) for g in goals()]))
    out = BENCH / "results" / ("isolation-smoke.json" if args.smoke else "isolation.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
