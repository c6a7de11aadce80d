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
APACHE = "scriptgate-apache"
# The mixed workload's two designs (bench/mixed.py).
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
    lines = ["| goal | measured | |", "| --- | ---: | --- |"]
    for g in judged:
        value = "-" if g["value"] is None else f"{g['value']} {g['unit']}"
        lines.append(f"| {g['goal']} | {value} | {g['verdict']} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Goal:
    text: str
    measure: Callable[[dict], float | None]
    target: float
    higher_is_better: bool
    unit: str

    def judge(self, results: dict) -> dict:
        try:
            value = self.measure(results)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        if value is None:
            verdict = "N/A"
        elif self.higher_is_better:
            verdict = "PASS" if value >= self.target else "MISS"
        else:
            verdict = "PASS" if value <= self.target else "MISS"
        return {"goal": self.text, "value": value, "unit": self.unit, "verdict": verdict}


def goals(sizes: dict) -> list[Goal]:
    def vs(base: str) -> Callable[[dict], float | None]:
        return lambda r: r["contenders"][SCRIPTGATE]["median"][f"vs_{base}"]

    routes_n, memory_n = sizes["routes_scripts"], sizes["memory_scripts"]
    return [
        Goal("Scriptgate >= 1.2x the assembly's requests/s", vs(ASSEMBLY), 1.2, True, "x"),
        Goal("Scriptgate >= 0.7x bare Flask's requests/s", vs(BARE), 0.7, True, "x"),
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
        Goal(
            "mixed: new design's fast-call p99 < 50 ms", new_design("fast_p99_ms"), 50, False, "ms"
        ),
        Goal(
            "mixed: new design's health p99 < 1 s", new_design("health_p99_ms"), 1000, False, "ms"
        ),
        Goal(
            "holding: new design holds >= 12 waiting scripts",
            lambda r: r["mixed"]["designs"][MIXED_GTHREAD]["hold"]["held_at_once"],
            12,
            True,
            "",
        ),
        Goal(
            "holding: new RSS <= 1.5x today's idle RSS",
            lambda r: r["mixed"]["hold_rss_ratio"],
            1.5,
            False,
            "x",
        ),
    ]


def new_design(key: str) -> Callable[[dict], float | None]:
    return lambda r: r["mixed"]["designs"][MIXED_GTHREAD][key]


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
CPU us/req: the workers' user+sys CPU time per request (steadier than req/s when other
  processes share the machine); for the Apache row, the backend workers' only.
vs bare / vs asm: median over rounds of the req/s ratio within the same round.
RSS MB: the largest worker after the load (the Apache row shows its backend's)."""


def goals_table(judged: list[dict]) -> str:
    lines = []
    for g in judged:
        value = "-" if g["value"] is None else f"{g['value']}{g['unit']}"
        lines.append(f"  {g['verdict']:<5} {g['goal']:<52} measured {value}")
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


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mixed_rows(mixed: dict) -> list[tuple[str, ...]]:
    """One row of cells per design: the mixed workload's table, text or Markdown."""
    rows = []
    for d in mixed["designs"].values():
        rows.append(
            (
                d["label"],
                _num(d.get("alone_rps")),
                _num(d.get("alone_p99_ms"), 1),
                _num(d["fast_rps"]),
                _num(d["fast_p50_ms"], 1),
                _num(d["fast_p99_ms"], 1),
                str(d["slow_completed"]),
                _num(d["health_p99_ms"], 1),
                f"{d['health_over_1s']}/{d['health_failed']}/{d['health_probes']}",
                _num(d["rss_mb_max"]),
                _num(d["anon_mb_max"]),
            )
        )
    return rows


MIXED_HEADER = (
    "design",
    "alone req/s",
    "p99",
    "mixed req/s",
    "p50",
    "p99",
    "slow ok",
    "health p99",
    ">1s/fail/n",
    "RSS MB",
    "anon MB",
)
MIXED_WIDTHS = (28, 12, 8, 12, 8, 8, 8, 11, 11, 8, 8)


def _hold_rows(mixed: dict) -> list[tuple[str, ...]]:
    rows = []
    for d in mixed["designs"].values():
        h = d["hold"]
        rows.append(
            (
                d["label"],
                f"{h['held_at_once']} of {h['calls']}",
                f"{h['gathered_in_s']:.2f}",
                f"{h['idle']['rss_mb']:.0f} ({h['idle']['anon_mb']:.0f})",
                f"{h['holding']['rss_mb']:.0f} ({h['holding']['anon_mb']:.0f})",
                str(h["holding"]["processes"]),
            )
        )
    return rows


HOLD_HEADER = ("design", "held at once", "in s", "idle MB", "holding MB", "processes")
HOLD_WIDTHS = (28, 14, 8, 14, 14, 11)


def _text_table(header: tuple[str, ...], widths: tuple[int, ...], rows: list) -> list[str]:
    def line(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return f"{first:<{widths[0]}}" + "".join(
            f"{cell:>{w}}" for cell, w in zip(rest, widths[1:], strict=True)
        )

    top = line(header)
    return [top, "-" * len(top), *(line(row) for row in rows)]


def _markdown_table(header: tuple[str, ...], rows: list) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _mixed_notes(mixed: dict) -> list[str]:
    notes = [
        f"fast-call req/s, new / today: {_ratio(mixed.get('fast_rps_ratio'))} "
        "(median of per-round ratios)",
        f"new design holding / today's idle: RSS {_ratio(mixed.get('hold_rss_ratio'))}, "
        f"anonymous {_ratio(mixed.get('hold_anon_ratio'))}",
    ]
    return notes + [f"note: {note}" for note in mixed.get("notes", [])]


def mixed_text(mixed: dict) -> str:
    shape = mixed["shape"]
    lines = [
        f"mixed workload: wrk {shape['fast_connections']} connections on /api/hello.py, "
        f"{shape['slow_callers']} callers of /api/slow.py (sleeps 2 s), 1 health probe/s; "
        f"{shape['rounds']} rounds of {shape['seconds']} s",
        *_text_table(MIXED_HEADER, MIXED_WIDTHS, _mixed_rows(mixed)),
        MIXED_LEGEND,
        "",
        "holding test: calls at once to /api/gather.py, which waits until released",
        *_text_table(HOLD_HEADER, HOLD_WIDTHS, _hold_rows(mixed)),
        HOLD_LEGEND,
        *_mixed_notes(mixed),
    ]
    return "\n".join(lines)


def mixed_markdown(mixed: dict) -> str:
    return "\n".join(
        [
            *_markdown_table(MIXED_HEADER, _mixed_rows(mixed)),
            "",
            *_markdown_table(HOLD_HEADER, _hold_rows(mixed)),
            "",
            *_mixed_notes(mixed),
        ]
    )


MIXED_LEGEND = """\
alone: the fast calls with nothing else running (reference, medians over rounds);
mixed: the fast calls while the slow callers and the health probe run; req/s, p50 and
  p99 (ms) are medians over rounds; slow ok: slow calls answered 200 (each
  started in a window; the last ones end after it).
health p99 (ms): all probes pooled, a failed one counts as 5000; >1s/fail/n: probes
  answered after more than 1 s / not answered in 5 s / sent.
RSS MB, anon MB: the most, summed over master, workers and plane, sampled once a second;
  anon counts each anonymous page once however many processes share it (Pss_Anon)."""

HOLD_LEGEND = """\
held at once: the most calls waiting in the script together; in s: until all arrived
  (or the window closed). MB: RSS (anon) summed over master, workers and plane, idle
  before the calls and while they wait."""
