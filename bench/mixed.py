"""The mixed workload: fast calls while slow scripts wait on I/O, on two server designs.

    sync     today's design: `scriptgate serve --worker-class sync`, 3 workers, one call
             per process; health checks on the main port, queued with every call
    gthread  the new default: 3 gthread workers x 8 threads, with `--platform-bind`,
             health checks on the platform plane's own port

Both serve one scripts folder (bench/scripts plus bench/mixed_scripts) on free 127.0.0.1
ports. Each is first warmed, then measured three ways:

- saturation: wrk alone on the fast script (closed loop, `saturation_connections`), the
  most fast calls a second the design answers; a figure apart, no goal rides on it;
- holding: bench/hold.py, how many waiting scripts it holds at once and at what memory;
- open loop (bench/openloop.py), what the goals are judged on: calls arrive at `rate` a
  second (Poisson, seeded: both designs get the same schedule), 9 in 10 to the fast
  script and 1 in 10 to /api/slow.py, which sleeps 2 s; plus one health probe a second.
  Latency counts from each call's due time; a call not answered in time, or that finds
  the client's pool of `max_in_flight` threads busy, fails. The first `settle_seconds`
  are sent but not counted (the slow calls in flight build up meanwhile); memory of the
  server's process tree is sampled once a second.

The open-loop runs go one after the other, the new design first: today's design starves,
and the calls its backlog holds keep its workers busy long after its window.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import hold, openloop, report
from bench.loadgen import run_wrk
from bench.openloop import FAST, HEALTH, SLOW, OpenLoop, Outcome, Pool, Target
from bench.procs import descendants, free_port, scriptgate_argv, wait_until
from bench.servers import BENCH, Server, anon_pss_mb, http_get, launch, rss_mb, wait_ready

PATHS = {FAST: "/api/hello.py", SLOW: "/api/slow.py", HEALTH: "/_platform/health"}
API_KEY = "bench-api-key"
HEADERS = {"X-API-Key": API_KEY}
WORKERS = 3
HEALTH_PERIOD_S = 1.0
HEALTH_TIMEOUT_S = 5.0
HEALTH_SLOW_MS = 1000.0
HEALTH_POOL = 8  # probes in flight at most: one a second, each given 5 s
GATHER_CALLS = 24
CLIENT_LAG_NOTE_MS = 10.0


@dataclass(frozen=True)
class Design:
    key: str
    label: str
    options: tuple[str, ...]
    plane: bool  # health on the platform plane's port, not the main one


SYNC = Design(
    report.MIXED_SYNC,
    "today: 3 sync workers",
    # Before 0844f60, gunicorn quietly ran gthread for "sync" with threads > 1 (the default
    # is 8); --threads 1 selects one call per process on either side of that commit.
    ("--worker-class", "sync", "--threads", "1"),
    False,
)
GTHREAD = Design(report.MIXED_GTHREAD, "new: 3 gthread x 8 + plane", (), True)
DESIGNS = (SYNC, GTHREAD)


@dataclass(frozen=True)
class Shape:
    """How long and how hard the mixed workload runs."""

    rate: float  # open loop: calls a second, fast and slow together
    seconds: float  # open loop: the measured window
    settle_seconds: float  # open loop: sent before the window, not counted
    saturation_seconds: int  # wrk on the fast calls alone; 0 leaves it out
    warmup_seconds: int  # wrk before anything is measured; 0: a few calls only
    gather_window_s: float  # the longest the holding test waits for every call to arrive
    slow_every: int = 10  # every 10th call is slow: 90% fast, 10% slow
    call_timeout_s: float = 10.0
    max_in_flight: int = 400  # the client's threads for calls, per design
    seed: int = 11
    saturation_connections: int = 27


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
    """RSS and anonymous PSS summed over a gunicorn master and every process below it
    (workers, plane, zygotes, runners): the RSS sum counts pages the processes share once
    per process, the anonymous PSS sum counts them once."""
    pids = [master, *sorted(descendants(master))]
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
        wait_ready(ds.server, PATHS[FAST])
        wait_until(
            lambda ds=ds: http_get(ds.health_port, PATHS[HEALTH], timeout=2)[0] == 200,
            timeout=30,
            what=f"{ds.server.name} health on port {ds.health_port}",
        )
        wait_until(
            lambda ds=ds: len(ds.server.worker_pids()) >= ds.processes,
            timeout=30,
            what=f"{ds.server.name}: {ds.processes} processes",
        )


def warm(ds: DesignServer, shape: Shape) -> None:
    """Every worker has imported the scripts before anything is measured."""
    if shape.warmup_seconds:
        fast_alone(ds, shape, shape.warmup_seconds)
    for _ in range(2 * ds.processes):
        status, _, body = http_get(ds.server.port, PATHS[FAST], HEADERS)
        if status != 200:
            raise RuntimeError(f"{ds.server.name} answered {status}: {body[:200]!r}")


def fast_alone(ds: DesignServer, shape: Shape, seconds: int) -> dict:
    url = ds.server.base_url + PATHS[FAST]
    return run_wrk(
        url, HEADERS, seconds=seconds, connections=shape.saturation_connections, threads=1
    ).to_dict()


def open_loop(ds: DesignServer, shape: Shape) -> OpenLoop:
    """The schedule and targets of one design's open-loop run: fast and slow calls share
    the client's pool, health probes have their own, so a full pool cannot fail them."""
    calls = Pool(shape.max_in_flight, f"calls-{ds.design.key}")
    probes = Pool(HEALTH_POOL, f"health-{ds.design.key}")
    port, timeout = ds.server.port, shape.call_timeout_s
    targets = {
        FAST: Target(port, PATHS[FAST], HEADERS, timeout, calls),
        SLOW: Target(port, PATHS[SLOW], HEADERS, timeout, calls),
        HEALTH: Target(ds.health_port, PATHS[HEALTH], {}, HEALTH_TIMEOUT_S, probes),
    }
    schedule = openloop.arrivals(
        shape.rate,
        shape.settle_seconds + shape.seconds,
        shape.seed,
        shape.slow_every,
        HEALTH_PERIOD_S,
    )
    return OpenLoop(schedule, targets)


def run(servers: list[DesignServer], shape: Shape, say: Callable[[str], None]) -> dict:
    """Warm, saturation and holding test on each server, then the open-loop runs."""
    measured: dict[str, dict] = {}
    for ds in servers:
        warm(ds, shape)
        saturation = None
        if shape.saturation_seconds:
            saturation = fast_alone(ds, shape, shape.saturation_seconds)
            say(
                f"  saturation {ds.design.key:<8} {saturation['requests_per_s']:>7.0f} req/s  "
                f"p99 {saturation['p99_ms']:.1f} ms"
            )
        held = hold.hold_test(
            ds.server.port, HEADERS, ds.gather_dir, ds.memory, GATHER_CALLS, shape.gather_window_s
        )
        say(f"  holding test {ds.design.key:<8} {held['held_at_once']} at once")
        measured[ds.design.key] = {"saturation": saturation, "hold": held}
    runs = []
    for ds in sorted(servers, key=lambda ds: ds.design is SYNC):  # today's design last
        loop, memory = open_loop(ds, shape), []
        say(f"  open loop {ds.design.key:<8} {shape.settle_seconds + shape.seconds:g} s")
        loop.run(lambda ds=ds, memory=memory: memory.append(ds.memory()))
        runs.append((ds, loop, memory))
    for ds, loop, memory in runs:  # the last calls of each were still in flight
        figures = summarize(loop.finish(), shape, memory)
        figures["client"]["peak_in_flight"] = loop.targets[FAST].pool.peak
        measured[ds.design.key].update(figures)
        fast = figures["fast"]
        say(
            f"  open loop {ds.design.key:<8} fast {figures['achieved_fast_per_s']:.1f}/s of "
            f"{figures['offered_fast_per_s']:.1f}/s  p99 {fast['p99_ms']} ms  "
            f"health p99 {figures['health']['p99_ms']} ms"
        )
    return results(servers, shape, measured)


def results(servers: list[DesignServer], shape: Shape, measured: dict[str, dict]) -> dict:
    designs = {
        ds.design.key: {
            "label": ds.design.label,
            "health_on": "plane port" if ds.design.plane else "main port",
            **measured[ds.design.key],
        }
        for ds in servers
    }
    today, new = designs[SYNC.key], designs[GTHREAD.key]
    notes = []
    if today["hold"]["held_at_once"] > WORKERS:
        notes.append("today's design held more calls than it has workers: it is not sync")
    for key, d in designs.items():
        lag = d["client"]["lag_p99_ms"]
        if lag is not None and lag > CLIENT_LAG_NOTE_MS:
            notes.append(f"{key}: the client itself sent calls late (p99 {lag} ms, counted)")
    saturation = None
    if today["saturation"] and new["saturation"] and today["saturation"]["requests_per_s"]:
        rps = new["saturation"]["requests_per_s"] / today["saturation"]["requests_per_s"]
        saturation = round(rps, 2)
    return {
        "shape": {
            **dataclasses.asdict(shape),
            "health_period_s": HEALTH_PERIOD_S,
            "health_timeout_s": HEALTH_TIMEOUT_S,
        },
        "designs": designs,
        "saturation_ratio": saturation,
        **hold.ratios(today["hold"], new["hold"]),
        "notes": notes,
    }


def summarize(outcomes: list[Outcome], shape: Shape, memory: list[dict]) -> dict:
    """One design's open-loop figures, over the calls due in the measured window."""
    counted = [o for o in outcomes if o.at >= shape.settle_seconds]
    fast = [o for o in counted if o.kind == FAST]
    slow = [o for o in counted if o.kind == SLOW]
    probes = [o for o in counted if o.kind == HEALTH]
    fast_figures = openloop.latency(fast, shape.call_timeout_s)
    return {
        "offered_fast_per_s": round(len(fast) / shape.seconds, 1),
        "achieved_fast_per_s": round(fast_figures["ok"] / shape.seconds, 1),
        "fast": fast_figures,
        "slow": openloop.latency(slow, shape.call_timeout_s),
        "health": openloop.latency(probes, HEALTH_TIMEOUT_S),
        "health_over_1s": sum(1 for o in probes if o.ok and o.ms > HEALTH_SLOW_MS),
        "failures": openloop.failures(fast + slow),
        "health_failures": openloop.failures(probes),
        "client": openloop.client_lag(counted),
        "rss_mb_max": max((m["rss_mb"] for m in memory), default=None),
        "anon_mb_max": max((m["anon_mb"] for m in memory), default=None),
    }
