"""The console with 500 scripts, in Debian's headless Chromium driven by Playwright.

    .venv/bin/python bench/console.py             # make bench-console, about a minute
    .venv/bin/python bench/console.py --scripts 2000

One `scriptgate serve` (2 workers) over N scripts in api/ (ten folders, each script with
three typed parameters). In a fresh Chromium profile each time, sign in and time:
- `cold`: once, right after the server started: the listing never waits for an import,
  so it lists scripts no runner has described yet by name, and the page asks again;
- then, once both workers' scanners have described every script (the listing has no
  `pending` entry on several answers in a row), five times:
  `render`, from the listing's answer arriving to the list on screen (performance marks
  around the render, less the fetch): the page's own cost, goal < 300 ms;
  `first render`, from navigation start to the list on screen, fetch included;
- the bytes of console.js and console.css that crossed the network (gzipped);
- axe-core's serious and critical violations on the list and on an open form.
Printed, never asserted: the machine is shared, the figures say what to expect.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import gunicorn, wait_until
from service.platform.console import BUDGET_GZIP_BYTES

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "bench-console-key"
SCRIPT = '''"""Report {n}: totals for one region and day."""
from datetime import date
from typing import Literal


def main(request, day: date, region: Literal["north", "south"] = "north", top: int = 5):
    return [{{"region": region, "day": day.isoformat(), "n": {n}}}]
'''
RUNS = 5


def write_scripts(root: Path, count: int) -> None:
    for n in range(count):
        folder = root / "api" / f"team{n % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"report_{n:04d}.py").write_text(SCRIPT.format(n=n))


def measure(url: str, tmp: Path, runs: int, name: str) -> list[dict]:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import sync_playwright

    found = []
    with sync_playwright() as playwright:
        for run in range(runs):
            context = playwright.chromium.launch_persistent_context(
                str(tmp / f"profile-{name}-{run}"),
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
            )
            try:
                found.append(one_run(context.new_page(), url, axe=Axe() if run == 0 else None))
            finally:
                context.close()
    return found


def one_run(page, url: str, axe) -> dict:
    assets: list = []
    page.on("requestfinished", lambda r: r.url.endswith((".js", ".css")) and assets.append(r))
    page.goto(url + "/_platform/console")
    page.evaluate("k => sessionStorage.setItem('scriptgate.key', k)", API_KEY)
    page.evaluate("sessionStorage.setItem('scriptgate.header', 'X-API-Key')")
    page.reload()
    # Polled from here: wait_for_function would evaluate a string in the page, which
    # its CSP (no 'unsafe-eval') refuses.
    rendered = "performance.getEntriesByName('scripts-rendered').length"
    wait_until(lambda: page.evaluate(rendered), timeout=60, interval=0.02, what="the list")
    timing = page.evaluate(
        """() => {
          const done = performance.getEntriesByName('scripts-rendered')[0].startTime;
          const listing = performance.getEntriesByType('resource')
            .find((r) => r.name.endsWith('/console/scripts'));
          return {render: done - listing.responseEnd, first: done,
                  items: document.querySelectorAll('#script-list li').length,
                  described: document.querySelectorAll('#script-list .summary').length};
        }"""
    )
    timing["bytes"] = sum(r.sizes()["responseBodySize"] for r in assets)
    if axe is not None:
        violations = axe.run(page).response["violations"]
        page.click("#script-list a")
        page.wait_for_selector("#p-day")
        violations += axe.run(page).response["violations"]
        serious = {v["id"] for v in violations if v["impact"] in ("serious", "critical")}
        timing["axe"] = sorted(serious)
    return timing


def described_everywhere(server, count: int) -> bool:
    """Several listings in a row (new connections, so both workers answer) with no
    script left `pending`."""
    for _ in range(6):
        answer = server.get("/_platform/console/scripts", headers={"X-API-Key": API_KEY})
        scripts = answer.json()["scripts"]
        if len(scripts) != count or any(s.get("pending") for s in scripts):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as name:
        tmp = Path(name)
        write_scripts(tmp / "scripts", args.scripts)
        env = {"API_KEY": API_KEY, "JOB_WORKERS": "0"}
        with gunicorn(tmp / "scripts", tmp, workers=2, env=env) as server:
            [cold] = measure(server.url, tmp, 1, "cold")
            started = time.monotonic()
            wait_until(
                lambda: described_everywhere(server, args.scripts),
                timeout=1200,
                interval=2,
                what="every script described by both workers",
            )
            warm_up = time.monotonic() - started
            results = measure(server.url, tmp, RUNS, "warm")
    renders = [r["render"] for r in results]
    firsts = [r["first"] for r in results]
    median, slowest = statistics.median, max
    print(f"console, {args.scripts} scripts ({results[0]['items']} listed), {RUNS} fresh profiles")
    print(
        f"  cold server: first render {cold['first']:.0f} ms (render {cold['render']:.0f} ms), "
        f"{cold['items']} listed, {cold['described']} of them described"
    )
    print(f"  then both workers' scanners described every script in {warm_up:.0f} s more")
    print(
        f"  render (listing answer to list on screen): median {median(renders):.0f} ms, "
        f"max {slowest(renders):.0f} ms; goal < 300 ms"
    )
    print(
        f"  first render (navigation to list on screen): median {median(firsts):.0f} ms, "
        f"max {slowest(firsts):.0f} ms"
    )
    print(
        f"  console.js + console.css transferred: {results[0]['bytes']} bytes "
        f"(budget {BUDGET_GZIP_BYTES})"
    )
    print(f"  axe-core serious or critical violations: {results[0]['axe'] or 'none'}")


if __name__ == "__main__":
    main()
