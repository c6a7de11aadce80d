"""Scrape cost of /_platform/metrics, fresh and after many worker restarts.

prometheus_client's multiprocess mode reads one file per worker per metric type on
every scrape, dead workers' included, so without care a long-running server's scrape
gets slower with every gunicorn worker restart. Scriptgate folds a dead worker's files
into `*_archive.db` (service/observability/multiproc.py). This measures whether that holds:

1. a real `scriptgate serve` with W workers over N tiny scripts;
2. every worker serves every script once, so each holds N series per metric (the other
   workers are SIGSTOPped meanwhile, which makes the routing certain, not statistical);
3. median HTTP scrape time, fresh;
4. R worker restarts, W at a time (SIGTERM; gunicorn starts replacements). Each
   replacement serves a rotating tenth of the scripts, so every dead worker leaves real
   series to merge; at the end every live worker has served every script again, so the
   live state is the fresh one plus whatever the restarts left behind;
5. median HTTP scrape time again.

Alongside, in-process timings of prometheus_client's own collector: on the directory as
the server left it, and on the directory a server *without* compaction would have after
R restarts (R copies of a fully-filled worker's files, a model). The dead workers' real
files are also copied aside before they die, to check that the archive holds exactly
their sum.

Every call is sampled (OTEL_TRACES_SAMPLER=always_on), so every series and bucket a
call touches carries an exemplar, and each state is scraped twice: in the text format
(what the goal has always judged) and in OpenMetrics, which merges every process's
exemplar file too (service/observability/exemplars.py); in process, the OpenMetrics collection with
and without reading the exemplars says what they add.

Goal: after the restarts a scrape takes < 100 ms and < 1.5x the fresh one, and so does
an OpenMetrics scrape with its exemplars.
Usage: bench/scrape_cost.py [--json] [--smoke] [--workers 3] [--scripts 300] [--restarts 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.procs import Gunicorn, gunicorn, wait_until  # noqa: E402
from service.observability.collector import FastMultiProcessCollector  # noqa: E402
from service.observability.exemplars import Reader  # noqa: E402

GOAL_MS = 100.0
GOAL_RATIO = 1.5
SCRIPT = 'import os\n\n\ndef main(request):\n    return {"pid": os.getpid()}\n'
# Per-worker files that a worker leaves behind when it dies (live gauges are dropped by
# prometheus_client itself, compaction or not).
KEPT_WHEN_DEAD = ("counter_", "histogram_")


class Clock:
    """Stops the run at a wall-clock budget, so the benchmark is bounded whatever happens."""

    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.budget = budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()


OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def get(server: Gunicorn, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET on a fresh connection (gunicorn's sync workers close each one anyway)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def write_scripts(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    urls = []
    for index in range(count):
        (folder / f"s{index:04d}.py").write_text(SCRIPT)
        urls.append(f"/s{index:04d}.py")
    return urls


@contextmanager
def only_worker(server: Gunicorn, pid: int) -> Iterator[None]:
    """Freeze every other worker, so every new connection is accepted by `pid`."""
    frozen = sorted(server.worker_pids() - {pid})
    stopped: list[int] = []
    try:
        for other in frozen:
            os.kill(other, signal.SIGSTOP)
            stopped.append(other)
        yield
    finally:
        for other in stopped:
            os.kill(other, signal.SIGCONT)


def fill(server: Gunicorn, pid: int, urls: list[str]) -> None:
    """Have worker `pid` serve every script once, and check that it did."""

    def call(url: str) -> int:
        status, body = get(server, url)
        if status != 200:
            raise RuntimeError(f"{url} answered {status}")
        return json.loads(body)["pid"]

    with only_worker(server, pid), ThreadPoolExecutor(max_workers=2) as pool:
        served = set(pool.map(call, urls))
    if served != {pid}:
        raise RuntimeError(f"meant for worker {pid}, served by {served}")


def median_ms(measure: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        measure()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2)


def http_scrape_ms(server: Gunicorn, times: int, headers: dict[str, str] | None = None) -> float:
    def scrape() -> None:
        status, _ = get(server, "/_platform/metrics", headers)
        if status != 200:
            raise RuntimeError(f"/_platform/metrics answered {status}")

    for _ in range(3):  # every worker has scraped once before the clock runs
        scrape()
    return median_ms(scrape, times)


def render(directory: Path) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    return generate_latest(registry).decode()


def openmetrics_figures(server: Gunicorn, directory: Path, scrapes: int) -> dict:
    """An OpenMetrics scrape over HTTP, its exemplars, and the same collection in
    process (the server's renderer, its caches warm) with and without the exemplars."""
    _, body = get(server, "/_platform/metrics", OPENMETRICS)
    collector, reader = FastMultiProcessCollector(str(directory)), Reader(directory)
    collector.render_openmetrics(reader.latest())  # parse every key once, as a server has
    return {
        "http_ms": http_scrape_ms(server, scrapes, OPENMETRICS),
        "exemplars": body.count(b' # {trace_id="'),
        "bytes": len(body),
        "collect_ms": median_ms(lambda: collector.render_openmetrics(reader.latest()), 5),
        "collect_without_exemplars_ms": median_ms(lambda: collector.render_openmetrics({}), 5),
    }


def values(exposition: str) -> dict[tuple, float]:
    """Counter and histogram samples by name and labels (live gauges left out)."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def copy_files(directory: Path, into: Path, wanted: Callable[[str], bool]) -> list[Path]:
    into.mkdir(exist_ok=True)
    return [Path(shutil.copy2(p, into / p.name)) for p in directory.glob("*.db") if wanted(p.name)]


def kept_when_dead(pid: int) -> Callable[[str], bool]:
    """The files of worker `pid` that outlive it when nothing compacts them."""
    return lambda name: name.startswith(KEPT_WHEN_DEAD) and name.endswith(f"_{pid}.db")


def restart(server: Gunicorn, victims: list[int], timeout: float) -> set[int]:
    """SIGTERM `victims` and wait for gunicorn's replacements; return their pids."""
    before = server.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGTERM)

    def replaced() -> set[int] | None:
        live = server.worker_pids()
        return live - before if len(live) == len(before) and not live & set(victims) else None

    return wait_until(replaced, timeout, 0.01, what="gunicorn to replace the workers")


def settled(server: Gunicorn, directory: Path) -> bool:
    """No file of a dead worker is left (child_exit has merged them all)."""
    live = {str(p) for p in server.worker_pids()}
    for path in directory.glob("*.db"):
        owner = path.stem.rsplit("_", 1)[-1]
        if owner != "archive" and owner not in live:
            return False
    return True


def model_uncompacted(live_dir: Path, template: list[Path], deaths: int, into: Path) -> int:
    """The directory without compaction: live files plus `deaths` full dead workers'."""
    copy_files(live_dir, into, lambda name: not name.endswith("_archive.db"))
    for n in range(deaths):
        for path in template:
            kind = path.name.split("_", 1)[0]
            shutil.copy2(path, into / f"{kind}_{9_000_000 + n}.db")
    return len(list(into.glob("*.db")))


def measure(args: argparse.Namespace, clock: Clock) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="scrape-cost-"))
    try:
        return _measure(args, clock, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(args: argparse.Namespace, clock: Clock, tmp: Path) -> dict:
    urls = write_scripts(tmp / "scripts", args.scripts)
    metrics_dir = tmp / "multiproc"
    metrics_dir.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "LOG_FILE": "",
        "OTEL_TRACES_SAMPLER": "always_on",  # every call leaves its exemplars
    }
    with gunicorn(tmp / "scripts", tmp, workers=args.workers, env=env) as server:
        full = set()
        for pid in sorted(server.worker_pids()):
            fill(server, pid, urls)
            full.add(pid)
        template = copy_files(metrics_dir, tmp / "template", kept_when_dead(min(full)))
        fresh_files = len(list(metrics_dir.glob("*.db")))
        fresh_http = http_scrape_ms(server, args.scrapes)
        fresh_collect = median_ms(lambda: render(metrics_dir), 5)
        fresh_om = openmetrics_figures(server, metrics_dir, args.scrapes)

        restarts, rehit = 0, max(1, len(urls) // 10)
        while restarts < args.restarts and clock.left() > args.reserve:
            victims = sorted(server.worker_pids())[: args.restarts - restarts]
            for pid in victims:
                copy_files(metrics_dir, tmp / "dead", kept_when_dead(pid))
            for pid in sorted(restart(server, victims, 30)):
                first = (restarts * rehit) % len(urls)
                fill(server, pid, (urls + urls)[first : first + rehit])
            restarts += len(victims)
        for pid in sorted(server.worker_pids() - full):
            fill(server, pid, urls)
        wait_until(lambda: settled(server, metrics_dir), 15, what="dead workers merged")

        after_files = len(list(metrics_dir.glob("*.db")))
        after_http = http_scrape_ms(server, args.scrapes)
        after_collect = median_ms(lambda: render(metrics_dir), 5)
        after_om = openmetrics_figures(server, metrics_dir, args.scrapes)
        copy_files(metrics_dir, tmp / "dead", lambda name: not name.endswith("_archive.db"))
        archive_exact = values(render(metrics_dir)) == values(render(tmp / "dead"))
        _, body = get(server, "/_platform/metrics")
        model_files = model_uncompacted(metrics_dir, template, restarts, tmp / "uncompacted")

    model_collect = median_ms(lambda: render(tmp / "uncompacted"), 3 if not args.smoke else 1)
    ratio = round(after_http / fresh_http, 2)
    om_ratio = round(after_om["http_ms"] / fresh_om["http_ms"], 2)
    return {
        "workers": args.workers,
        "scripts": args.scripts,
        "restarts": restarts,
        "scrapes_per_median": args.scrapes,
        "exposition_bytes": len(body),
        "fresh": {"files": fresh_files, "http_ms": fresh_http, "collect_ms": fresh_collect},
        "after_restarts": {
            "files": after_files,
            "http_ms": after_http,
            "collect_ms": after_collect,
            "archive_equals_sum_of_dead_workers": archive_exact,
        },
        "after_restarts_without_compaction_model": {
            "files": model_files,
            "collect_ms": model_collect,
        },
        "openmetrics": {"fresh": fresh_om, "after_restarts": after_om, "ratio": om_ratio},
        "ratio_after_to_fresh": ratio,
        "goal": f"after restarts < {GOAL_MS:g} ms and < {GOAL_RATIO:g}x fresh "
        "(text, and OpenMetrics with exemplars)",
        "goal_met": after_http < GOAL_MS
        and ratio < GOAL_RATIO
        and after_om["http_ms"] < GOAL_MS
        and om_ratio < GOAL_RATIO
        and restarts == args.restarts,
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
        "seconds": round(clock.elapsed(), 1),
    }


def table(r: dict) -> str:
    fresh, after = r["fresh"], r["after_restarts"]
    bare = r["after_restarts_without_compaction_model"]
    rows = [
        ("state", "files", "HTTP scrape ms", "collect ms"),
        ("fresh", fresh["files"], fresh["http_ms"], fresh["collect_ms"]),
        (f"after {r['restarts']} restarts", after["files"], after["http_ms"], after["collect_ms"]),
        ("  same, no compaction*", bare["files"], "-", bare["collect_ms"]),
    ]
    lines = [
        f"/_platform/metrics: {r['workers']} workers, {r['scripts']} scripts each, "
        f"HTTP median of {r['scrapes_per_median']} (exposition {r['exposition_bytes']} bytes)",
        *(f"{a:<24}{b!s:>7}{c!s:>16}{d!s:>12}" for a, b, c, d in rows),
        "* modelled: the live files plus one fully-filled dead worker's files per restart",
        *openmetrics_lines(r["openmetrics"]),
        f"after/fresh: {r['ratio_after_to_fresh']}x; goal {r['goal']}: "
        f"{'met' if r['goal_met'] else 'NOT met'}",
        f"archive equals the sum of the dead workers' files: "
        f"{after['archive_equals_sum_of_dead_workers']}; "
        f"load average {r['loadavg']}; {r['seconds']} s",
    ]
    return "\n".join(lines)


def openmetrics_lines(om: dict) -> list[str]:
    rows = [("fresh", om["fresh"]), ("after restarts", om["after_restarts"])]
    lines = ["OpenMetrics with exemplars: HTTP ms, exemplars shown, in-process collect ms"]
    lines += [
        f"  {state:<22}{o['http_ms']:>9} ms {o['exemplars']:>6} exemplars "
        f"{o['collect_ms']:>8} ms ({o['collect_without_exemplars_ms']} ms without them)"
        for state, o in rows
    ]
    lines.append(f"  after/fresh: {om['ratio']}x")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: proves it runs")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--scripts", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes per median")
    parser.add_argument("--budget", type=float, default=85.0, help="seconds, whole run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scripts, args.restarts, args.scrapes, args.budget = 30, 4, 5, 25.0
    # Time kept back for what follows the restarts (final fill, scrapes, the model).
    args.reserve = 6.0 + args.scripts * args.workers * 0.005 + 2 * args.scrapes * 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args, Clock(args.budget))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
