"""The console with 500 scripts, in Debian's headless Chromium driven by Playwright.

    .venv/bin/python bench/console.py             # make bench-console, about a minute
    .venv/bin/python bench/console.py --scripts 2000

One `scriptgate serve` (2 workers) over N scripts in api/ (a few folders, each with three
typed parameters). The listing is asked for once per worker first, so every script has
been described (a cold listing is N imports, the runners' cost, measured elsewhere).
Then, in a fresh profile, five times: sign in, and time
- `render`: from the listing's answer arriving to the list on screen
  (performance marks `scripts-requested` .. `scripts-rendered` around the render, less
  the fetch), the page's own cost, goal < 300 ms;
- `first render`: from navigation start to the list on screen, fetch included;
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

from bench.procs import gunicorn
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


def measure(url: str, tmp: Path) -> list[dict]:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import sync_playwright

    found = []
    with sync_playwright() as playwright:
        for run in range(RUNS):
            context = playwright.chromium.launch_persistent_context(
                str(tmp / f"profile-{run}"), executable_path=CHROMIUM, headless=True, args=ARGS
            )
            try:
                page = context.new_page()
                assets: list = []
                page.on(
                    "requestfinished",
                    lambda r, a=assets: r.url.endswith((".js", ".css")) and a.append(r),
                )
                page.goto(url + "/_platform/console")
                page.evaluate("k => sessionStorage.setItem('scriptgate.key', k)", API_KEY)
                page.evaluate("sessionStorage.setItem('scriptgate.header', 'X-API-Key')")
                page.reload()
                page.wait_for_function("performance.getEntriesByName('scripts-rendered').length")
                timing = page.evaluate(
                    """() => {
                      const done = performance.getEntriesByName('scripts-rendered')[0].startTime;
                      const listing = performance.getEntriesByType('resource')
                        .find((r) => r.name.endsWith('/console/scripts'));
                      return {render: done - listing.responseEnd, first: done,
                              items: document.querySelectorAll('#script-list li').length};
                    }"""
                )
                timing["bytes"] = sum(r.sizes()["responseBodySize"] for r in assets)
                if run == 0:
                    axe = Axe()
                    violations = axe.run(page).response["violations"]
                    page.click("#script-list a")
                    page.wait_for_selector("#p-day")
                    violations += axe.run(page).response["violations"]
                    timing["axe"] = sorted(
                        {v["id"] for v in violations if v["impact"] in ("serious", "critical")}
                    )
                found.append(timing)
            finally:
                context.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as name:
        tmp = Path(name)
        write_scripts(tmp / "scripts", args.scripts)
        env = {"API_KEY": API_KEY, "JOB_WORKERS": "0"}
        with gunicorn(tmp / "scripts", tmp, workers=2, env=env) as server:
            started = time.monotonic()
            for _ in range(2):  # each worker describes every script once (a new connection
                # may land on either worker: ask until both have answered quickly)
                server.get(
                    "/_platform/console/scripts", headers={"X-API-Key": API_KEY}, timeout=600
                )
            cold = time.monotonic() - started
            for _ in range(6):
                server.get(
                    "/_platform/console/scripts", headers={"X-API-Key": API_KEY}, timeout=600
                )
            results = measure(server.url, tmp)
    renders = [r["render"] for r in results]
    firsts = [r["first"] for r in results]
    median, slowest = statistics.median, max
    print(f"console, {args.scripts} scripts ({results[0]['items']} listed), {RUNS} fresh profiles")
    print(f"  listing warm-up (both workers describe every script): {cold:.1f} s")
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
