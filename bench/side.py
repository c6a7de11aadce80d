"""The side measurements: change-detection cost, /_platform/routes time, memory per worker.

Routes and memory share one `scriptgate serve` over a generated scripts folder; the
caller starts it early (it boots while the contenders run) and stops it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.procs import WORKER_PID, free_port, scriptgate_argv
from bench.servers import BENCH, Server, launch, rss_mb, wait_ready

BENCH_SCRIPTS = BENCH / "scripts"
HELLO = BENCH_SCRIPTS / "api" / "hello.py"
LIB = BENCH_SCRIPTS / "_lib"
API_KEY = "bench-api-key"
ROUTES_TIMEOUT_S = 30.0

# Appended to copies of the benchmark script for the memory run: `handle` wins over
# `main`, reports which worker answered (its runner's zygote's parent), and can hold the
# worker briefly so that concurrent calls spread over every worker.
PID_HANDLER = """

def handle(request):
    import os
    import time

    hold = min(float(request.args.get("hold") or 0), 0.5)
    if hold:
        time.sleep(hold)
    return {"pid": WORKER_PID}
""".replace("WORKER_PID", WORKER_PID)


def change_detection(iterations: int) -> dict:
    """Per-request cost of the script cache's change check against a plain dict lookup.

    The hot path is `ScriptCache.cached_target(target)` (one stat per file the script
    depends on, from the URL's target) where the platform has it, else `cached(path)`
    after `locate()`. Both are timed, with `locate()` itself, which a miss still pays.
    """
    from service.scripts.loader import ScriptCache
    from service.scripts.resolve import locate, parse_target

    scripts_dir = BENCH_SCRIPTS.resolve()
    cache = ScriptCache(scripts_dir, 30.0, 60.0)
    target = parse_target("/api/hello.py")
    path = locate(scripts_dir, target)
    script = _described(cache, path)
    by_target = hasattr(cache, "cached_target")
    if by_target:
        cache.remember(target, script)
    names = {
        "cache": cache,
        "table": {target: script},
        "target": target,
        "path": path,
        "locate": locate,
        "parse_target": parse_target,
        "scripts_dir": scripts_dir,
    }

    def best_us(statement: str) -> float:
        timer = timeit.Timer(statement, globals=names)
        return min(timer.repeat(repeat=5, number=iterations)) / iterations * 1e6

    if by_target:
        hot, found = "cache.cached_target(target)", cache.cached_target(target)
    else:
        hot, found = "cache.cached(locate(scripts_dir, target))", cache.cached(path)
    if found is not script:
        raise RuntimeError(f"{hot} did not return the loaded script")
    hot_us = best_us(hot)
    dict_us = best_us("table.get(target)")
    return {
        "hot_path": hot,
        "files_checked": len(script.stamps),
        "iterations": iterations,
        "cached_us": round(hot_us, 2),
        "dict_lookup_us": round(dict_us, 3),
        "stat_check_us": round(hot_us - dict_us, 2),
        "cached_path_us": round(best_us("cache.cached(path)"), 2),
        "locate_us": round(best_us("locate(scripts_dir, parse_target('/api/hello.py'))"), 2),
    }


def _described(cache: Any, path: str) -> Any:
    """The script as the cache describes it: a runner imports it (the worker never does),
    then the runner and its zygote are stopped; the change check needs no runner."""
    from service.runners.pool import RunnerPool
    from service.runners.spawner import RunnerConfig

    runners = RunnerPool(RunnerConfig(str(cache.root), "INFO", 1 << 20, 512 << 20, None))
    try:
        script, runner = cache.load(path, runners)
        runners.put_back(runner)
        return script
    finally:
        runners.close()


def _write_tree(root: Path, count: int) -> list[str]:
    """`count` copies of the benchmark script spread over zones and folders; their URLs."""
    source = HELLO.read_text() + PID_HANDLER
    shutil.copytree(LIB, root / "_lib")
    urls = []
    for i in range(count):
        if i % 5 == 0:
            rel, url = f"tools/t{i:04d}.py", f"/tools/t{i:04d}.py"
        elif i % 5 == 1:
            rel, url = f"admin/ops/a{i:04d}.py", f"/admin/ops/a{i:04d}.py"
        else:
            rel, url = f"api/team{i % 10}/s{i:04d}.py", f"/api/team{i % 10}/s{i:04d}.py"
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
        urls.append(url)
    (root / "api" / "_private.py").write_text("def main(request):\n    return 'never served'\n")
    return urls


def _timed_get(server: Server, path: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    status, _, body = server.get(path, timeout=ROUTES_TIMEOUT_S)
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")
    return elapsed, body


def routes_time(server: Server, count: int, calls: int) -> dict:
    """Client-observed time of GET /_platform/routes (and ?detail=1) over `count` scripts.

    The first call of each kind is reported apart: it is the cold one (for ?detail=1 it
    parses every file; later calls hit the per-worker cache keyed by each file's stat).
    """
    result: dict = {"scripts": count, "calls": calls}
    for key, path in (("plain", "/_platform/routes"), ("detail", "/_platform/routes?detail=1")):
        try:
            first, body = _timed_get(server, path)
        except TimeoutError:  # ?detail=1 has a runner describe each new script
            result[key] = {"error": f"the first call took over {ROUTES_TIMEOUT_S:g} s"}
            continue
        listed = sum(len(entries) for entries in json.loads(body).values())
        if listed != count:
            raise RuntimeError(f"{path} listed {listed} scripts, expected {count}")
        warm = [_timed_get(server, path)[0] for _ in range(calls)]
        result[key] = {
            "first_ms": round(first, 1),
            "median_ms": round(statistics.median(warm), 1),
            "max_ms": round(max(warm), 1),
            "bytes": len(body),
        }
    return result


def _hit_every_worker(server: Server, url: str, workers: set[int], rounds: int = 10) -> None:
    """Call `url` until every worker has answered it (each call holds its worker 30 ms)."""
    seen: set[int] = set()
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for _ in range(rounds):
            answers = list(pool.map(lambda _: server.get(url + "?hold=0.03"), workers))
            for status, _, body in answers:
                if status != 200:
                    raise RuntimeError(f"GET {url} answered {status}")
                seen.add(json.loads(body)["pid"])
            if workers <= seen:
                return
    raise RuntimeError(f"{url} reached workers {sorted(seen)}, not all of {sorted(workers)}")


def memory_per_worker(server: Server, urls: list[str]) -> dict:
    """VmRSS of every worker before and after each script in `urls` ran in it."""
    pids = set(server.worker_pids())
    before = {pid: rss_mb(pid) or 0.0 for pid in pids}
    for url in urls:
        _hit_every_worker(server, url, pids)
    after = {pid: rss_mb(pid) or 0.0 for pid in pids}
    if set(server.worker_pids()) != pids:
        raise RuntimeError("a worker was replaced during the memory run")
    count = len(urls)
    return {
        "scripts": count,
        "workers": [
            {
                "pid": pid,
                "baseline_mb": round(before[pid], 1),
                "loaded_mb": round(after[pid], 1),
                "per_script_kb": round((after[pid] - before[pid]) * 1024 / count, 1),
            }
            for pid in sorted(pids)
        ],
        "max_loaded_mb": round(max(after.values()), 1),
    }


def launch_tree_server(
    root: Path, count: int, workdir: Path, workers: int
) -> tuple[Server, list[str]]:
    """Write `count` scripts under `root` and start (not await) a server over them."""
    urls = _write_tree(root, count)
    port = free_port()
    env = {"API_KEY": API_KEY, "LOG_FILE": str(workdir / "side.log")}
    argv = scriptgate_argv(port, workers, root)
    server = launch("side", argv, port, env, workdir, workers, {"X-API-Key": API_KEY})
    return server, urls


def measure_tree(server: Server, urls: list[str], memory_scripts: int, calls: int) -> dict:
    """Memory first (loading `memory_scripts` of the scripts), then the routes listing."""
    # Not /_platform/health: a worker answering it imports every script, to count the
    # broken ones, and the memory figure would start from all of them loaded.
    wait_ready(server, "/_platform/routes")
    api_urls = [u for u in urls if u.startswith("/api/")][:memory_scripts]
    return {
        "memory": memory_per_worker(server, api_urls),
        "routes": routes_time(server, len(urls), calls),
    }
