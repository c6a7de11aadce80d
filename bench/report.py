"""Summaries of the benchmark run: the contenders table, side measurements and goals.

Goals are reported as PASS or MISS, never asserted: a slow or busy machine must not
fail a build.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

BARE = "bare"
ASSEMBLY = "assembly"
ORIGIN = "origin"
SCRIPTGATE = "scriptgate"
SCRIPTGATE_NO_METRICS = "scriptgate-metrics-off"
SCRIPTGATE_SYNC = "scriptgate-sync"  # --worker-class sync: what the gthread default costs
SCRIPTGATE_BEFORE = "scriptgate-before"  # commit ba5cfd7: scripts on threads (bench/isolation.py)
APACHE = "scriptgate-apache"
# The mixed workload's two designs (bench/mixed.py, bench/mixed_report.py).
MIXED_SYNC = "sync"
MIXED_GTHREAD = "gthread"


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def summarize(rounds: list[dict]) -> dict:
    """Median of each figure over the rounds, and the spread of requests/s."""
    rps = [r["requests_per_s"] for r in rounds]
    middle = statistics.median(rps)
    return {
        "requests_per_s": round(middle, 1),
        "spread_pct": round((max(rps) - min(rps)) / middle * 100, 1) if middle else 0.0,
        "p50_ms": round(median_of(rounds, "p50_ms"), 2),
        "p99_ms": round(median_of(rounds, "p99_ms"), 2),
        "cpu_us_per_request": round(median_of(rounds, "cpu_us_per_request"), 1),
        "errors": sum(r["errors"] for r in rounds),
    }


def paired_ratio(results: dict, key: str, base: str) -> float | None:
    """Median over rounds of key's requests/s divided by base's in the same round.

    Rounds are interleaved, so the two runs of a pair are seconds apart: pairing them
    cancels most of what a busy neighbour does to the machine between rounds.
    """
    mine = results.get(key, {}).get("rounds") or []
    theirs = results.get(base, {}).get("rounds") or []
    ratios = [
        a["requests_per_s"] / b["requests_per_s"]
        for a, b in zip(mine, theirs, strict=False)  # a run cut short has fewer rounds
        if b["requests_per_s"]
    ]
    return round(statistics.median(ratios), 2) if ratios else None


def add_ratios(results: dict) -> None:
    """Each measured contender's requests/s relative to bare Flask and to the assembly."""
    for key, entry in results.items():
        if entry.get("median"):
            for base in (BARE, ASSEMBLY, ORIGIN):
                entry["median"][f"vs_{base}"] = paired_ratio(results, key, base)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def contenders_table(results: dict) -> str:
    header = (
        f"{'contender':<34}{'req/s':>9}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}{'vs bare':>9}{'vs asm':>8}{'RSS MB':>8}"
    )
    lines = [header, "-" * len(header)]
    for entry in results.values():
        label = entry["label"]
        median = entry.get("median")
        if not median:
            lines.append(f"{label:<34}{entry.get('skipped', 'not measured')}")
            continue
        rss = entry.get("rss_mb_max")
        lines.append(
            f"{label:<34}{median['requests_per_s']:>9.0f}{median['spread_pct']:>7.0f}%"
            f"{median['p50_ms']:>9.2f}{median['p99_ms']:>9.2f}"
            f"{median['cpu_us_per_request']:>12.0f}"
            f"{_ratio(median.get('vs_bare')):>9}{_ratio(median.get('vs_assembly')):>8}"
            f"{(f'{rss:.0f}' if rss else '-'):>8}"
        )
        if median["errors"]:
            lines.append(f"{'':<4}! {median['errors']} errors or non-2xx answers during the rounds")
    return "\n".join(lines)


def derived(results: dict) -> dict:
    """Two pairs the table does not show directly: metrics on vs off, Apache vs direct."""
    out = {}
    for name, key, base in (
        ("metrics_on_vs_off", SCRIPTGATE, SCRIPTGATE_NO_METRICS),
        ("apache_vs_direct", APACHE, SCRIPTGATE),
        ("gthread_vs_sync", SCRIPTGATE, SCRIPTGATE_SYNC),
    ):
        ratio = paired_ratio(results, key, base)
        if ratio is not None:
            cpu = results[key]["median"]["cpu_us_per_request"]
            base_cpu = results[base]["median"]["cpu_us_per_request"]
            out[name] = {"rps_ratio": ratio, "cpu_us_delta": round(cpu - base_cpu, 1)}
    return out


def derived_text(pairs: dict) -> str:
    labels = {
        "metrics_on_vs_off": "metrics on / METRICS=off",
        "apache_vs_direct": "behind Apache / direct",
        "gthread_vs_sync": "gthread x 8 (default) / --worker-class sync",
    }
    return "\n".join(
        f"{labels[name]}: {p['rps_ratio']:.2f}x req/s (paired by round), "
        f"{p['cpu_us_delta']:+.0f} us worker CPU per request"
        for name, p in pairs.items()
    )


def contenders_markdown(results: dict) -> str:
    """The same table as contenders_table, as Markdown for the README."""
    lines = [
        "| contender | req/s | p50 ms | p99 ms | CPU µs/req | vs bare Flask | vs assembly |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in results.values():
        median = entry.get("median")
        if not median:
            lines.append(f"| {entry['label']} | {entry.get('skipped', 'not measured')} ||||||")
            continue
        lines.append(
            f"| {entry['label']} | {median['requests_per_s']:.0f} | {median['p50_ms']:.2f} "
            f"| {median['p99_ms']:.2f} | {median['cpu_us_per_request']:.0f} "
            f"| {_ratio(median.get('vs_bare'))} | {_ratio(median.get('vs_assembly'))} |"
        )
    return "\n".join(lines)


def goals_markdown(judged: list[dict]) -> str:
    lines = ["| goal | measured | | today's design |", "| --- | ---: | --- | ---: |"]
    for g in judged:
        lines.append(
            f"| {g['goal']} | {_measured(g['value'], g['unit'], ' ')} | {g['verdict']} "
            f"| {_beside(g, ' ')} |"
        )
    return "\n".join(lines)


def _measured(value: float | None, unit: str, space: str = "") -> str:
    return "-" if value is None else f"{value}{space}{unit}"


def _beside(judged: dict, space: str = "") -> str:
    """Today's design's figure for a goal set for the new one, judged alike."""
    beside = judged.get("beside")
    if beside is None:
        return ""
    return f"{_measured(beside['value'], judged['unit'], space)} {beside['verdict']}"


@dataclass(frozen=True)
class Goal:
    text: str
    measure: Callable[[dict], float | None]
    target: float
    higher_is_better: bool
    unit: str
    # The same figure for today's design, printed beside the new design's, judged alike.
    beside: Callable[[dict], float | None] | None = None

    def judge(self, results: dict) -> dict:
        value = _value(self.measure, results)
        judged = {"goal": self.text, "value": value, "unit": self.unit}
        judged["verdict"] = self.verdict(value)
        if self.beside is not None:
            other = _value(self.beside, results)
            judged["beside"] = {"value": other, "verdict": self.verdict(other)}
        return judged

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "N/A"
        if self.higher_is_better:
            return "PASS" if value >= self.target else "MISS"
        return "PASS" if value <= self.target else "MISS"


def _value(measure: Callable[[dict], float | None], results: dict) -> float | None:
    try:
        return measure(results)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def goals(sizes: dict) -> list[Goal]:
    def vs(base: str) -> Callable[[dict], float | None]:
        return lambda r: r["contenders"][SCRIPTGATE]["median"][f"vs_{base}"]

    routes_n, memory_n = sizes["routes_scripts"], sizes["memory_scripts"]
    return [
        Goal("Scriptgate >= 1.2x the assembly's requests/s", vs(ASSEMBLY), 1.2, True, "x"),
        Goal("Scriptgate >= 0.7x bare Flask's requests/s", vs(BARE), 0.7, True, "x"),
        # The mixed workload's issue: the new design may not lower the hello ratio.
        Goal("Scriptgate >= 0.52x bare Flask (today's ratio)", vs(BARE), 0.52, True, "x"),
        Goal("Scriptgate >= 5x the source post's dispatcher", vs(ORIGIN), 5.0, True, "x"),
        Goal(
            "change detection <= 20 us per request",
            lambda r: r["side"]["change_detection"]["cached_us"],
            20.0,
            False,
            "us",
        ),
        Goal(
            f"/_platform/routes for {routes_n:,} scripts < 50 ms",
            lambda r: r["side"]["routes"]["plain"]["median_ms"],
            50.0,
            False,
            "ms",
        ),
        Goal(
            f"<= 60 MB RSS per worker with {memory_n} scripts",
            lambda r: r["side"]["memory"]["max_loaded_mb"],
            60.0,
            False,
            "MB",
        ),
    ]


def scrape_goal(scrape: dict) -> dict | None:
    """scrape_cost.py's own goal, judged by that tool, as one more line of the goals."""
    figures = scrape.get("figures")
    if not isinstance(figures, dict) or "goal_met" not in figures:
        return None
    after = figures.get("after_restarts") or {}
    return {
        "goal": f"scrape: {figures.get('goal', 'scrape_cost.py goal')}",
        "value": after.get("http_ms"),
        "unit": "ms",
        "verdict": "PASS" if figures["goal_met"] else "MISS",
    }


TABLE_LEGEND = """\
req/s, p50, p99: medians over the rounds; spread: (max - min) / median of req/s.
CPU us/req: the workers' user+sys CPU time per request, with their zygotes' and runners'
  (steadier than req/s when other processes share the machine); for the Apache row, the
  backend's only.
vs bare / vs asm: median over rounds of the req/s ratio within the same round.
RSS MB: the largest worker after the load (the Apache row shows its backend's)."""


def goals_table(judged: list[dict]) -> str:
    lines = []
    for g in judged:
        line = f"  {g['verdict']:<5} {g['goal']:<52} measured {_measured(g['value'], g['unit'])}"
        if "beside" in g:
            line += f"   (today's design: {_beside(g)})"
        lines.append(line)
    return "\n".join(lines)


def side_text(side: dict) -> str:
    lines = []
    cd = side.get("change_detection")
    if cd:
        lines.append(
            f"change detection, {cd['hot_path']} ({cd['files_checked']} files stat'ed): "
            f"{cd['cached_us']:.2f} us/request vs dict lookup {cd['dict_lookup_us']:.3f} us "
            f"(+{cd['stat_check_us']:.2f} us)"
        )
        lines.append(
            f"  on a cache miss: locate() {cd['locate_us']:.2f} us + "
            f"cached(path) {cd['cached_path_us']:.2f} us"
        )
    routes = side.get("routes")
    if routes:
        for key, label in (("plain", "/_platform/routes"), ("detail", "?detail=1")):
            r = routes[key]
            if "error" in r:
                lines.append(f"{label:<18} {routes['scripts']:>5} scripts: {r['error']}")
                continue
            lines.append(
                f"{label:<18} {routes['scripts']:>5} scripts: median {r['median_ms']:.1f} ms "
                f"over {routes['calls']} calls (first call {r['first_ms']:.1f} ms, "
                f"max {r['max_ms']:.1f} ms, {r['bytes']:,} bytes)"
            )
    memory = side.get("memory")
    if memory:
        for w in memory["workers"]:
            lines.append(
                f"worker {w['pid']}: {w['baseline_mb']:.1f} MB idle -> {w['loaded_mb']:.1f} MB "
                f"with {memory['scripts']} scripts loaded ({w['per_script_kb']:.0f} kB/script)"
            )
    for key, note in side.get("notes", {}).items():
        lines.append(f"{key}: {note}")
    return "\n".join(lines)


def flat_figures(data: object, prefix: str = "", limit: int = 40) -> list[str]:
    """Scalar leaves of a JSON document as `a.b.c = value` lines (for scrape_cost's output)."""
    lines: list[str] = []

    def walk(node: object, path: str) -> None:
        if len(lines) >= limit:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")
        else:
            lines.append(f"{path} = {node}")

    walk(data, prefix)
    return lines
