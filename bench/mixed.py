"""The mixed workload: fast calls while slow scripts wait on I/O, on two server designs.

    sync     today's design: `scriptgate serve --worker-class sync`, 3 workers, one call
             per process; health checks on the main port, queued with every call
    gthread  the new default: 3 gthread workers x 8 threads, with `--platform-bind`,
             health checks on the platform plane's own port

Both serve one scripts folder (bench/scripts plus bench/mixed_scripts) on free 127.0.0.1
ports and take the same load, in interleaved rounds (sync, gthread, sync, gthread ...).
A round first runs the fast calls alone (the reference), then the mixed window:

- fast: wrk, `fast_connections` connections in a closed loop on GET /api/hello.py;
- slow: `slow_callers` client threads, each a closed loop on GET /api/slow.py (which
  sleeps 2 s), on threads of their own so no fast call queues behind a slow one inside
  the client;
- health: one GET /_platform/health a second on a fresh connection, as a load balancer
  probes, 5 s timeout; the memory of the server's whole process tree is sampled after
  each probe.

The 90% / 10% split is by client connections (27 fast, 3 slow), not by calls: at 2,000
fast calls a second, a tenth of all calls being slow would keep 450 slow calls waiting at
once. Three slow callers are as many as today's design has workers, which is the case
the issue is about: slow scripts alone can fill every sync worker.

Then the holding test: GATHER_CALLS calls at once to /api/gather.py, which waits until
released. Each waiting call leaves a file in a folder, so the bench counts the calls a
server holds at once, samples its memory while they wait, then releases them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import report
from bench.loadgen import run_wrk
from bench.procs import child_pids, free_port, scriptgate_argv, wait_until
from bench.servers import BENCH, Server, anon_pss_mb, http_get, launch, rss_mb, wait_ready

FAST = "/api/hello.py"
SLOW = "/api/slow.py"
GATHER = "/api/gather.py"
HEALTH = "/_platform/health"
API_KEY = "bench-api-key"
HEADERS = {"X-API-Key": API_KEY}
WORKERS = 3
HEALTH_PERIOD_S = 1.0
HEALTH_TIMEOUT_S = 5.0
HEALTH_SLOW_MS = 1000.0
SLOW_TIMEOUT_S = 30.0
GATHER_CALLS = 24
RELEASE = "release"  # the file that ends every waiting gather.py call


@dataclass(frozen=True)
class Design:
    key: str
    label: str
    options: tuple[str, ...]
    plane: bool  # health on the platform plane's port, not the main one


SYNC = Design(
    report.MIXED_SYNC,
    "today: 3 sync workers",
    # gunicorn quietly runs gthread for "sync" when threads > 1 (the default is 8).
    ("--worker-class", "sync", "--threads", "1"),
    False,
)
GTHREAD = Design(report.MIXED_GTHREAD, "new: 3 gthread x 8 + plane", (), True)
DESIGNS = (SYNC, GTHREAD)


@dataclass(frozen=True)
class Shape:
    """How long and how hard the mixed workload runs."""

    rounds: int
    seconds: int  # the mixed window of a round
    reference_seconds: int  # fast calls alone, before it; 0 leaves the reference out
    warmup_seconds: int
    gather_window_s: float  # the longest the holding test waits for every call to arrive
    budget_seconds: float  # no further round starts past it
    fast_connections: int = 27
    slow_callers: int = 3


@dataclass
class DesignServer:
    design: Design
    server: Server
    health_port: int
    gather_dir: Path

    @property
    def processes(self) -> int:
        """Master excluded: the workers, and the plane where there is one."""
        return WORKERS + int(self.design.plane)

    def memory(self) -> dict:
        return tree_memory(self.server.proc.pid if self.server.proc else 0)


def tree_memory(master: int) -> dict:
    """RSS and anonymous PSS summed over a gunicorn master and its children (workers,
    plane): the RSS sum counts pages the processes share once per process, the anonymous
    PSS sum counts them once."""
    pids = [master, *sorted(child_pids(master))]
    rss = [rss_mb(pid) for pid in pids]
    anon = [anon_pss_mb(pid) for pid in pids]
    return {
        "processes": sum(1 for r in rss if r is not None),
        "rss_mb": round(sum(r for r in rss if r), 1),
        "anon_mb": round(sum(a for a in anon if a), 1),
    }


def launch_designs(tmp: Path) -> list[DesignServer]:
    """Start (not await) one server per design over a shared copy of the scripts."""
    scripts = tmp / "mixed-scripts"
    shutil.copytree(BENCH / "scripts", scripts)
    shutil.copytree(BENCH / "mixed_scripts", scripts, dirs_exist_ok=True)
    return [_launch(design, scripts, tmp) for design in DESIGNS]


def _launch(design: Design, scripts: Path, tmp: Path) -> DesignServer:
    port = free_port()
    gather_dir = tmp / f"gather-{design.key}"
    gather_dir.mkdir()
    env = {
        "API_KEY": API_KEY,
        "API_TRUSTED_IPS": "127.0.0.1/32",
        "LOG_FILE": str(tmp / f"mixed-{design.key}.log"),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix=f"mixed-{design.key}-", dir=tmp),
        "BENCH_GATHER_DIR": str(gather_dir),
    }
    argv = [*scriptgate_argv(port, WORKERS, scripts), *design.options]
    health_port = port
    if design.plane:
        health_port = free_port()
        argv += ["--platform-bind", f"127.0.0.1:{health_port}"]
    server = launch(f"mixed-{design.key}", argv, port, env, tmp, WORKERS, HEADERS)
    return DesignServer(design, server, health_port, gather_dir)


def await_designs(servers: list[DesignServer]) -> None:
    """Until each answers a fast call and health, with every worker (and plane) up."""
    for ds in servers:
        wait_ready(ds.server, FAST)
        wait_until(
            lambda ds=ds: http_get(ds.health_port, HEALTH, timeout=2)[0] == 200,
            timeout=30,
            what=f"{ds.server.name} health on port {ds.health_port}",
        )
        wait_until(
            lambda ds=ds: len(ds.server.worker_pids()) >= ds.processes,
            timeout=30,
            what=f"{ds.server.name}: {ds.processes} processes",
        )


@dataclass
class Call:
    started: float
    ended: float
    status: int | None  # None: no answer (timeout, refused, reset)

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1000


@dataclass
class CallLoop:
    """`threads` client threads calling `path` until stopped: each starts its next call
    as soon as the last is answered, or on the next tick of `period_s` when one is set
    (a call that overruns a tick skips it, as a load balancer's probe does)."""

    port: int
    path: str
    headers: dict[str, str]
    threads: int
    timeout_s: float
    period_s: float = 0.0
    after_each: Callable[[], None] | None = None
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"bench{self.path}", daemon=True)
            for _ in range(self.threads)
        ]

    def start(self) -> CallLoop:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """No new calls; the ones in flight finish in their own time (see join)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        first = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = http_get(self.port, self.path, self.headers, self.timeout_s)[0]
            except OSError:
                status = None
            self.calls.append(Call(started, time.monotonic(), status))
            if self.after_each is not None:
                self.after_each()
            if self.period_s:
                ticks = (time.monotonic() - first) // self.period_s + 1
                self._stop.wait(first + ticks * self.period_s - time.monotonic())


@dataclass
class Round:
    """One window of mixed load on one server; its last slow calls finish after it."""

    alone: dict | None
    fast: dict
    slow: CallLoop
    health: CallLoop
    memory: list[dict]

    def join(self) -> None:
        self.slow.join(SLOW_TIMEOUT_S + 1)
        self.health.join(HEALTH_TIMEOUT_S + 1)

    def summary(self) -> dict:
        slow = self.slow.calls
        return {
            "alone": self.alone,
            "fast": self.fast,
            "slow_completed": sum(1 for c in slow if c.status == 200),
            "slow_failed": sum(1 for c in slow if c.status != 200),
            "health_ms": [round(c.ms, 1) if c.status == 200 else None for c in self.health.calls],
            "rss_mb_max": max((m["rss_mb"] for m in self.memory), default=None),
            "anon_mb_max": max((m["anon_mb"] for m in self.memory), default=None),
        }


def run_round(ds: DesignServer, shape: Shape) -> Round:
    """The fast path alone, then again while the slow callers and the health prober run."""
    alone = fast_calls(ds, shape, shape.reference_seconds) if shape.reference_seconds else None
    memory: list[dict] = []
    slow = CallLoop(ds.server.port, SLOW, HEADERS, shape.slow_callers, SLOW_TIMEOUT_S)
    health = CallLoop(
        ds.health_port,
        HEALTH,
        {},
        1,
        HEALTH_TIMEOUT_S,
        period_s=HEALTH_PERIOD_S,
        after_each=lambda: memory.append(ds.memory()),
    )
    slow.start()
    health.start()
    try:
        fast = fast_calls(ds, shape, shape.seconds)
    finally:
        slow.stop()
        health.stop()
    return Round(alone, fast, slow, health, memory)


def fast_calls(ds: DesignServer, shape: Shape, seconds: int) -> dict:
    url = ds.server.base_url + FAST
    return run_wrk(
        url, HEADERS, seconds=seconds, connections=shape.fast_connections, threads=1
    ).to_dict()


def warm(ds: DesignServer, shape: Shape) -> None:
    """Every worker has imported the scripts before anything is measured."""
    if shape.warmup_seconds:
        fast_calls(ds, shape, shape.warmup_seconds)
    for _ in range(2 * ds.processes):
        status, _, body = http_get(ds.server.port, FAST, HEADERS)
        if status != 200:
            raise RuntimeError(f"{ds.server.name} answered {FAST} with {status}: {body[:200]!r}")


def hold_test(ds: DesignServer, calls: int, window_s: float) -> dict:
    """`calls` gather.py calls at once: how many wait together, and memory meanwhile.

    Idle memory is taken first, with no call in flight. The count is the most files
    seen at once in the gather folder, polled until all `calls` are there or
    `window_s` has passed; memory is sampled then, before the release.
    """
    folder = ds.gather_dir
    (folder / RELEASE).unlink(missing_ok=True)
    idle = ds.memory()
    started = time.monotonic()
    peak = 0
    with ThreadPoolExecutor(max_workers=calls) as pool:
        answers = [
            pool.submit(http_get, ds.server.port, GATHER, HEADERS, SLOW_TIMEOUT_S)
            for _ in range(calls)
        ]
        try:
            while peak < calls and time.monotonic() - started < window_s:
                peak = max(peak, _waiting(folder))
                time.sleep(0.02)
            gathered_s = time.monotonic() - started
            held = ds.memory()
        finally:
            (folder / RELEASE).touch()
        seen = [_seen_by_script(future.result) for future in answers]
    return {
        "calls": calls,
        "held_at_once": peak,
        "gathered_in_s": round(gathered_s, 2),
        "answered": sum(1 for s in seen if s is not None),
        "script_saw_max": max((s for s in seen if s is not None), default=0),
        "idle": idle,
        "holding": held,
    }


def _waiting(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name != RELEASE)


def _seen_by_script(result: Callable[[], tuple[int, dict, bytes]]) -> int | None:
    """What gather.py answered: how many calls waited with it; None for no 200 answer."""
    try:
        status, _, body = result()
    except OSError:
        return None
    return json.loads(body)["waiting_with"] if status == 200 else None


def run(servers: list[DesignServer], shape: Shape, say: Callable[[str], None]) -> dict:
    """Interleaved rounds of mixed load, then the holding test on each server."""
    deadline = time.monotonic() + shape.budget_seconds
    for ds in servers:
        warm(ds, shape)
    rounds: dict[str, list[Round]] = {ds.design.key: [] for ds in servers}
    notes = []
    round_seconds = len(servers) * (shape.reference_seconds + shape.seconds + 1)
    for number in range(shape.rounds):
        if number and time.monotonic() + round_seconds > deadline:
            notes.append(f"stopped after {number} rounds to stay within the time budget")
            break
        for ds in servers:
            done = run_round(ds, shape)
            rounds[ds.design.key].append(done)
            say(
                f"  mixed round {number + 1} {ds.design.key:<8} "
                f"fast {done.fast['requests_per_s']:>7.0f} req/s  p99 {done.fast['p99_ms']:.1f} ms"
            )
    results: dict = {
        "shape": {
            "seconds": shape.seconds,
            "reference_seconds": shape.reference_seconds,
            "rounds": len(next(iter(rounds.values()))),
            "fast_connections": shape.fast_connections,
            "slow_callers": shape.slow_callers,
        },
        "designs": {},
        "notes": notes,
    }
    for ds in servers:
        key = ds.design.key
        for done in rounds[key]:  # the last slow calls must not hold threads in the test
            done.join()
        summaries = [done.summary() for done in rounds[key]]
        results["designs"][key] = {
            "label": ds.design.label,
            "health_on": "plane port" if ds.design.plane else "main port",
            **summarize(summaries),
            "hold": hold_test(ds, GATHER_CALLS, shape.gather_window_s),
            "rounds": summaries,
        }
        say(f"  holding test {key:<8} {results['designs'][key]['hold']['held_at_once']} at once")
    results.update(hold_ratios(results["designs"]))
    if results["designs"][SYNC.key]["hold"]["held_at_once"] > WORKERS:
        notes.append("today's design held more calls than it has workers: it is not sync")
    fast_rounds = {key: {"rounds": [r.fast for r in done]} for key, done in rounds.items()}
    results["fast_rps_ratio"] = report.paired_ratio(fast_rounds, GTHREAD.key, SYNC.key)
    return results


def hold_ratios(designs: dict) -> dict:
    """The new design's memory while holding its calls over today's when idle."""
    idle = designs[SYNC.key]["hold"]["idle"]
    held = designs[GTHREAD.key]["hold"]["holding"]
    return {
        "hold_rss_ratio": round(held["rss_mb"] / idle["rss_mb"], 2),
        "hold_anon_ratio": round(held["anon_mb"] / idle["anon_mb"], 2),
    }


def summarize(rounds: list[dict]) -> dict:
    """Fast calls: medians over rounds; slow calls: totals; health: every probe pooled."""
    fast = [r["fast"] for r in rounds]
    alone = [r["alone"] for r in rounds if r["alone"]]
    probes = [ms for r in rounds for ms in r["health_ms"]]
    reference = {}
    if alone:
        reference = {
            "alone_rps": round(statistics.median(f["requests_per_s"] for f in alone), 1),
            "alone_p99_ms": round(statistics.median(f["p99_ms"] for f in alone), 2),
        }
    return {
        **reference,
        "fast_rps": round(statistics.median(f["requests_per_s"] for f in fast), 1),
        "fast_p50_ms": latency_median(fast, "p50_ms"),
        "fast_p99_ms": latency_median(fast, "p99_ms"),
        "fast_errors": sum(f["errors"] for f in fast),
        "slow_completed": sum(r["slow_completed"] for r in rounds),
        "slow_failed": sum(r["slow_failed"] for r in rounds),
        "health_probes": len(probes),
        "health_failed": sum(1 for ms in probes if ms is None),
        "health_over_1s": sum(1 for ms in probes if ms is not None and ms > HEALTH_SLOW_MS),
        "health_p99_ms": percentile(probes, 99, failed_as=HEALTH_TIMEOUT_S * 1000),
        "health_max_ms": max((ms for ms in probes if ms is not None), default=None),
        "rss_mb_max": max((r["rss_mb_max"] for r in rounds if r["rss_mb_max"]), default=None),
        "anon_mb_max": max((r["anon_mb_max"] for r in rounds if r["anon_mb_max"]), default=None),
    }


def latency_median(runs: list[dict], key: str) -> float | None:
    """Median over the wrk runs that completed a call (wrk reports 0 ms for none)."""
    values = [run[key] for run in runs if run["requests"]]
    return round(statistics.median(values), 2) if values else None


def percentile(values: list[float | None], pct: float, failed_as: float) -> float | None:
    """Nearest-rank percentile; a failed probe (None) counts as `failed_as`."""
    if not values:
        return None
    ordered = sorted(failed_as if v is None else v for v in values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil, without float rounding
    return round(ordered[int(rank) - 1], 1)
