"""Benchmark Scriptgate against bare Flask, a hand-built assembly and the source post.

    .venv/bin/python bench/run.py            # full run (make bench), a few minutes
    .venv/bin/python bench/run.py --smoke    # seconds; proves the harness end to end

Every contender answers GET /api/hello.py with {"message": "Hello, Guest!"} from
gunicorn with the same worker count, on a free 127.0.0.1 port: sync workers, except
Scriptgate's rows, which run `scriptgate serve`'s default (gthread, 8 threads). wrk
drives them in interleaved rounds (A1 B1 C1 ... A2 B2 C2 ...) so a noisy neighbour hurts
all alike, and the table shows the median of the rounds. Then come the side measurements, the mixed
workload (bench/mixed.py: an open-loop mix of fast calls, slow calls and health probes on
today's sync design and the new gthread one) and the scrape-cost figures
(bench/scrape_cost.py, when present).
Goals are printed as PASS/MISS, never asserted. Results are written to bench/results/ as
JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    apache,
    instructions,
    instructions_report,
    isolation,
    mixed,
    mixed_report,
    report,
    side,
)
from bench.loadgen import WRK, run_wrk, wrk_version
from bench.procs import REPO, descendants, free_port, scriptgate_argv
from bench.servers import (
    BENCH,
    Server,
    gunicorn_argv,
    launch,
    rss_mb,
    stop,
    stop_all,
    wait_ready,
)

TARGET = "/api/hello.py"
EXPECTED = {"message": "Hello, Guest!"}
API_KEY = "bench-api-key"
HEADERS = {"X-API-Key": API_KEY}
RESULTS = BENCH / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# scrape_cost.py overshoots its --budget on a busy machine; keep this much in hand.
SCRAPE_MARGIN_S = 35


@dataclass(frozen=True)
class Mode:
    """How long and how big each part of the run is."""

    rounds: int
    seconds: int
    warmup_seconds: int
    change_iterations: int
    routes_scripts: int
    routes_calls: int
    memory_scripts: int
    budget_seconds: float  # contenders, side measurements and scrape cost
    mixed: mixed.Shape  # the mixed workload, outside the budget: it runs for a fixed time


# The mixed workload at 60 calls/s (54 fast, 6 slow: about 12 slow calls in flight) keeps
# a server of 2 cores under a tenth busy, so its figures hold steady; 30 s counted give
# some 1,600 fast calls per design (the p99 is about the 17th slowest) and 30 probes.
FULL = Mode(5, 3, 1, 10_000, 1000, 9, 100, 240, mixed.Shape(60, 30, 2, 3, 1, 2.0))
# The smoke run only proves the harness: a short window at a third of the rate.
SMOKE = Mode(1, 1, 0, 2000, 100, 3, 10, 30, mixed.Shape(20, 1.5, 0, 0, 0, 0.5))


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    start: Callable[[Path, int], Server]


def _bare(tmp: Path, workers: int) -> Server:
    port = free_port()
    argv = gunicorn_argv("bare_flask:app", port, workers)
    return launch(report.BARE, argv, port, {}, tmp, workers, HEADERS)


def _assembly(tmp: Path, workers: int) -> Server:
    port = free_port()
    metrics_dir = Path(tempfile.mkdtemp(prefix="assembly-metrics-", dir=tmp))
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "BENCH_LOG_FILE": str(tmp / "assembly.log"),
        # The same key, allowlist and proxy as Scriptgate's row, and spans sampled out as
        # Scriptgate samples them out without an exporter.
        "API_KEY": API_KEY,
        "API_TRUSTED_IPS": "127.0.0.1/32",
        "OTEL_TRACES_SAMPLER": "always_off",
    }
    argv = gunicorn_argv("assembly:app", port, workers)
    return launch(report.ASSEMBLY, argv, port, env, tmp, workers, HEADERS)


def _origin(tmp: Path, workers: int) -> Server:
    port = free_port()
    env = {
        "BENCH_SCRIPTS_DIR": str(BENCH / "scripts"),
        "BENCH_LOG_FILE": str(tmp / "origin.log"),
        "API_KEY": API_KEY,
        "API_TRUSTED_IPS": "127.0.0.1",
    }
    argv = gunicorn_argv("origin_dispatcher:app", port, workers)
    return launch(report.ORIGIN, argv, port, env, tmp, workers, HEADERS)


def _scriptgate(metrics: bool, sync: bool = False) -> Callable[[Path, int], Server]:
    key = report.SCRIPTGATE if metrics else report.SCRIPTGATE_NO_METRICS
    if sync:
        key = report.SCRIPTGATE_SYNC

    def start(tmp: Path, workers: int) -> Server:
        port = free_port()
        env = {
            "API_KEY": API_KEY,
            "ADMIN_API_KEY": "bench-admin-key",
            "API_TRUSTED_IPS": "127.0.0.1/32",
            "TRUSTED_PROXIES": "127.0.0.1/32",  # the Apache contender proxies to this one
            "LOG_FILE": str(tmp / f"{key}.log"),
            "METRICS": "on" if metrics else "off",
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix=f"{key}-metrics-", dir=tmp),
        }
        argv = scriptgate_argv(port, workers, BENCH / "scripts")
        if sync:  # one thread per worker, as the other contenders run
            argv += ["--worker-class", "sync", "--threads", "1"]
        return launch(key, argv, port, env, tmp, workers, HEADERS)

    return start


CONTENDERS = (
    Contender(report.BARE, "bare Flask (floor)", _bare),
    Contender(report.ASSEMBLY, "assembly (Flask+pfe+otel+jsonlog)", _assembly),
    Contender(report.ORIGIN, "source post's dispatcher", _origin),
    Contender(report.SCRIPTGATE, "Scriptgate, all features", _scriptgate(True)),
    Contender(report.SCRIPTGATE_NO_METRICS, "Scriptgate, METRICS=off", _scriptgate(False)),
    Contender(report.SCRIPTGATE_SYNC, "Scriptgate, --worker-class sync", _scriptgate(True, True)),
    Contender(
        report.SCRIPTGATE_BEFORE,
        f"Scriptgate before runners ({isolation.BEFORE_COMMIT})",
        isolation.before_contender(),
    ),
)
APACHE_KEY, APACHE_LABEL = report.APACHE, "Scriptgate behind Apache"


_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout, with seconds since start, so a slow step shows itself."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def worker_cpu_seconds(server: Server) -> float:
    """utime + stime of every worker and what runs below it (zygotes and runners, where
    scripts run), from /proc/PID/stat."""
    total = 0
    workers = server.worker_pids()
    for pid in {*workers, *(d for w in workers for d in descendants(w))}:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def verify(server: Server) -> None:
    status, _, body = server.get(TARGET)
    if status != 200 or json.loads(body) != EXPECTED:
        raise RuntimeError(f"{server.name} answered {status} {body[:200]!r}, not {EXPECTED}")


def measure_round(server: Server, seconds: int, connections: int, threads: int) -> dict:
    cpu_before = worker_cpu_seconds(server)
    result = run_wrk(
        server.base_url + TARGET, HEADERS, seconds=seconds, connections=connections, threads=threads
    )
    cpu = worker_cpu_seconds(server) - cpu_before
    row = result.to_dict()
    row["cpu_us_per_request"] = round(cpu / result.requests * 1e6, 1) if result.requests else 0.0
    return row


def run_contenders(mode: Mode, args: argparse.Namespace, tmp: Path, deadline: float) -> dict:
    results: dict = {c.key: {"label": c.label, "rounds": []} for c in CONTENDERS}
    results[APACHE_KEY] = {"label": APACHE_LABEL, "rounds": []}
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        # All boot at once; every one is stopped however we leave.
        stack.callback(lambda: stop_all(list(servers.values())))
        for contender in CONTENDERS:
            servers[contender.key] = contender.start(tmp, args.workers)
        for server in servers.values():
            wait_ready(server, TARGET)
            verify(server)
        say("contenders ready")
        front = start_apache(stack, servers[report.SCRIPTGATE], tmp, results[APACHE_KEY])
        if front is not None:
            servers[APACHE_KEY] = front
        for server in servers.values():  # warm: every worker has imported what it serves
            if mode.warmup_seconds:
                run_wrk(
                    server.base_url + TARGET,
                    HEADERS,
                    seconds=mode.warmup_seconds,
                    connections=args.connections,
                    threads=args.threads,
                )
            else:
                for _ in range(4 * args.workers):
                    verify(server)
        round_seconds = len(servers) * (mode.seconds + 1)
        for number in range(mode.rounds):
            if number and time.monotonic() + round_seconds > deadline:
                results["_note"] = f"stopped after {number} rounds to stay within the time budget"
                break
            for key, server in servers.items():
                row = measure_round(server, mode.seconds, args.connections, args.threads)
                results[key]["rounds"].append(row)
                say(
                    f"  round {number + 1} {key:<24} {row['requests_per_s']:>8.0f} req/s  "
                    f"p99 {row['p99_ms']:.1f} ms"
                )
        for key, server in servers.items():
            sizes = [rss_mb(pid) for pid in server.worker_pids()]
            results[key]["rss_mb_max"] = round(max(s for s in sizes if s), 1) if sizes else None
    note = results.pop("_note", None)
    for entry in results.values():
        if entry["rounds"]:
            entry["median"] = report.summarize(entry["rounds"])
    report.add_ratios(results)
    if note:
        results[report.SCRIPTGATE]["note"] = note
    return results


def start_apache(
    stack: contextlib.ExitStack, backend: Server, tmp: Path, entry: dict
) -> Server | None:
    """Contender 5: the shipped vhost in front of the Scriptgate contender, if available."""
    if not apache.available():
        entry["skipped"] = "skipped: apache2 with mod_proxy_balancer is not installed"
        return None
    workdir = tmp / "apache"
    workdir.mkdir()
    try:
        url = stack.enter_context(apache.apache_front([f"127.0.0.1:{backend.port}"], workdir))
    except Exception as exc:  # report it, keep the other figures
        entry["skipped"] = f"skipped: Apache did not start ({type(exc).__name__}: {exc})"[:300]
        return None
    server = Server(
        APACHE_KEY,
        None,
        int(str(url).rsplit(":", 1)[1]),
        url.error_log,
        backend.workers,
        dict(HEADERS),
        master_pid=backend.proc.pid if backend.proc else None,
    )
    wait_ready(server, TARGET)
    verify(server)
    return server


def run_side(mode: Mode, tree: tuple[Server, list[str]]) -> dict:
    say("side measurements")
    server, urls = tree
    measured = side.measure_tree(server, urls, mode.memory_scripts, mode.routes_calls)
    return {"change_detection": side.change_detection(mode.change_iterations), **measured}


def run_mixed(mode: Mode, designs: list[mixed.DesignServer]) -> dict:
    shape = mode.mixed
    say(
        f"mixed workload: wrk on fast calls alone ({shape.saturation_seconds} s) and the "
        f"holding test, then {shape.rate:g} calls/s open loop for "
        f"{shape.settle_seconds + shape.seconds:g} s per design"
    )
    mixed.await_designs(designs)
    return mixed.run(designs, shape, say)


class ScrapeCost:
    """bench/scrape_cost.py --json, another engineer's tool, run as a subprocess.

    It runs alone, after the load, within what is left of the time budget. A smoke run
    only checks that it is there and starts: even its --smoke takes longer than the
    whole smoke run may.
    """

    SCRIPT = BENCH / "scrape_cost.py"

    def __init__(self, tmp: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.outcome: dict = {}
        self.stdout = tmp / "scrape_cost.json"
        self.stderr = tmp / "scrape_cost.err"
        self.deadline = 0.0

    def start(self, smoke: bool, budget: float) -> None:
        if not self.SCRIPT.exists():
            self.outcome = {"skipped": "bench/scrape_cost.py does not exist yet"}
            return
        usage = subprocess.run(
            [sys.executable, str(self.SCRIPT), "--help"], capture_output=True, text=True, timeout=30
        ).stdout
        if smoke:
            found = "--json" in usage
            self.outcome = {
                "skipped": "skipped in --smoke (its --help works; `make bench` runs it)"
                if found
                else "bench/scrape_cost.py --help does not offer --json"
            }
            return
        argv = [sys.executable, str(self.SCRIPT), "--json"]
        if "--budget" in usage:
            argv += ["--budget", str(round(budget))]
        self.deadline = time.monotonic() + budget + 60
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)

    def stop(self) -> None:
        """SIGINT first: the tool's own finally blocks then stop the servers it started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def finish(self) -> dict:
        if self.proc is None:
            return self.outcome
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            return {"error": "scrape_cost.py did not finish in time"}
        if self.proc.returncode != 0:
            tail = self.stderr.read_text(errors="replace")[-500:]
            return {"error": f"scrape_cost.py exited {self.proc.returncode}: {tail}"}
        try:
            return {"figures": json.loads(self.stdout.read_text())}
        except json.JSONDecodeError:
            return {"error": f"scrape_cost.py printed no JSON: {self.stdout.read_text()[-300:]}"}


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    import gunicorn

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "wrk": wrk_version(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "scriptgate_commit": _git("describe", "--always", "--dirty"),
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=10)
    return done.stdout.strip() or "unknown"


def print_report(results: dict) -> None:
    host, cfg = results["machine"], results["config"]
    print()
    print(
        f"{host['date']}  {host['cores']} cores  {host['cpu']}  Python {host['python']}  "
        f"gunicorn {host['gunicorn']}  {host['wrk']}  at {host['scriptgate_commit']}"
    )
    print(
        f"{cfg['workers']} workers each (sync; the Scriptgate rows run its default, gthread "
        f"x 8 threads); wrk {cfg['threads']} thread, "
        f"{cfg['connections']} connections, {cfg['seconds']} s x {cfg['rounds']} rounds "
        f"(median); load average before {' '.join(host['loadavg_before'])}, "
        f"after {' '.join(host['loadavg_after'])}"
    )
    if cfg["smoke"]:
        print("SMOKE RUN: durations are tiny, the figures only prove the harness works")
    print()
    print(report.contenders_table(results["contenders"]))
    print(report.TABLE_LEGEND)
    print()
    print(report.derived_text(results["derived"]))
    print(report.side_text(results["side"]))
    print()
    print(mixed_report.text(results["mixed"]))
    print()
    print(instructions_report.text(results["instructions"]))
    print()
    print(isolation.text(results["isolation"]))
    scrape = results["scrape_cost"]
    print("\nscrape cost (bench/scrape_cost.py):")
    if "figures" in scrape:
        print("\n".join("  " + line for line in report.flat_figures(scrape["figures"])))
    else:
        print("  " + (scrape.get("skipped") or scrape.get("error", "")))
    print("\ngoals:")
    print(report.goals_table(results["goals"]))


def write_results(results: dict, smoke: bool) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / ("smoke.json" if smoke else f"bench-{stamp}.json")
    path.write_text(json.dumps(results, indent=2) + "\n")
    host, cfg = results["machine"], results["config"]
    markdown = [
        f"{host['date']}, {host['cores']} cores ({host['cpu']}), Python {host['python']}, "
        f"gunicorn {host['gunicorn']}, {host['wrk']}; "
        f"`{cfg['command']}` at {host['scriptgate_commit']}; "
        f"load average before {host['loadavg_before'][0]}.",
        "",
        report.contenders_markdown(results["contenders"]),
        "",
        mixed_report.markdown(results["mixed"]),
        "",
        instructions_report.markdown(results["instructions"]),
        "",
        "```",
        isolation.text(results["isolation"]),
        "```",
        "",
        report.goals_markdown(results["goals"]),
    ]
    path.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny durations, seconds in all")
    parser.add_argument("--rounds", type=int, help="rounds per contender (median is reported)")
    parser.add_argument("--seconds", type=int, help="wrk duration of one round")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, every contender")
    # One wrk thread: the machine has 2 cores and the 2 workers need them. 8 connections
    # (4 per worker) keep a connection waiting whenever a worker frees up, since sync
    # workers close every connection and wait for the client's FIN.
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(WRK).exists():
        print(f"{WRK} not found: install the wrk package (`make debs`)", file=sys.stderr)
        return 2
    base = SMOKE if args.smoke else FULL
    mode = dataclasses.replace(
        base, rounds=args.rounds or base.rounds, seconds=args.seconds or base.seconds
    )
    started = time.monotonic()
    results: dict = {
        "machine": machine(),
        "config": {
            "smoke": args.smoke,
            "workers": args.workers,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": mode.rounds,
            "seconds": mode.seconds,
            "command": " ".join([".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])]),
        },
    }
    with tempfile.TemporaryDirectory(prefix="scriptgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        scrape = ScrapeCost(tmp)
        with contextlib.ExitStack() as stack:
            stack.callback(scrape.stop)
            # The side server boots alongside the contenders and idles until they are done.
            tree = side.launch_tree_server(tmp / "tree", mode.routes_scripts, tmp, args.workers)
            stack.callback(stop, tree[0])
            designs = mixed.launch_designs(tmp)  # idle too until their turn
            stack.callback(stop_all, [ds.server for ds in designs])
            say(f"contenders: {mode.rounds} interleaved rounds of {mode.seconds} s")
            results["contenders"] = run_contenders(
                mode, args, tmp, started + mode.budget_seconds * 0.6
            )
            results["side"] = run_side(mode, tree)
            stop(tree[0])
            mixed_started = time.monotonic()
            results["mixed"] = run_mixed(mode, designs)
            stop_all([ds.server for ds in designs])
            # The mixed workload has a budget of its own: the scrape keeps all of its.
            spent = mixed_started - started
            left = max(mode.budget_seconds - spent - SCRAPE_MARGIN_S, 30)
            if not args.smoke:
                say(f"bench/scrape_cost.py (budget {left:.0f} s)")
            scrape.start(smoke=args.smoke, budget=left)
            results["scrape_cost"] = scrape.finish()
        # Last, alone on the machine: timed rounds, then callgrind two at a time.
        say("instructions per request (callgrind) and in-process req/s")
        counted = instructions.SMOKE if args.smoke else instructions.FULL
        results["instructions"] = instructions.measure(counted, tmp / "instructions")
        # What isolation costs: over HTTP it is the contenders' "before" row.
        sizes = isolation.SMOKE if args.smoke else isolation.FULL
        results["isolation"] = isolation.measure(sizes, tmp / "isolation", say, with_http=False)
    results["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    sizes = {"routes_scripts": mode.routes_scripts, "memory_scripts": mode.memory_scripts}
    results["derived"] = report.derived(results["contenders"])
    goals = report.goals(sizes) + mixed_report.goals() + instructions_report.goals()
    goals += isolation.goals()
    results["goals"] = [goal.judge(results) for goal in goals]
    scrape_goal = report.scrape_goal(results["scrape_cost"])
    if scrape_goal:
        results["goals"].append(scrape_goal)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(results)
    path = write_results(results, args.smoke)
    print(f"\nresults: {path.relative_to(REPO)}  ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
