"""The mixed workload's tables and goals (bench/mixed.py measures, this module reports).

Goals are set for the new design; today's design's same figure is printed beside each,
judged alike, to show what the change buys.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.report import MIXED_GTHREAD, MIXED_SYNC, Goal


def _design(key: str, *path: str) -> Callable[[dict], float | None]:
    def measure(results: dict) -> float | None:
        node = results["mixed"]["designs"][key]
        for step in path:
            node = node[step]
        return node

    return measure


def goals() -> list[Goal]:
    def both(*path: str) -> dict:
        return {"measure": _design(MIXED_GTHREAD, *path), "beside": _design(MIXED_SYNC, *path)}

    return [
        Goal(
            "mixed: new design's fast-call p99 < 50 ms",
            **both("fast", "p99_ms"),
            target=50,
            higher_is_better=False,
            unit="ms",
        ),
        Goal(
            "mixed: new design's health p99 < 1 s",
            **both("health", "p99_ms"),
            target=1000,
            higher_is_better=False,
            unit="ms",
        ),
        Goal(
            "holding: new design holds >= 12 waiting scripts",
            _design(MIXED_GTHREAD, "hold", "held_at_once"),
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


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _latency(value: float | None, timeout_s: float) -> str:
    """A percentile that fell on a failed call (counted as its timeout) reads as such."""
    if value is not None and value >= timeout_s * 1000:
        return f">{timeout_s:.0f}s"
    return _num(value, 1)


def _open_loop_rows(mixed: dict) -> list[tuple[str, ...]]:
    timeout, health_timeout = mixed["shape"]["call_timeout_s"], mixed["shape"]["health_timeout_s"]
    rows = []
    for d in mixed["designs"].values():
        fast, slow, health = d["fast"], d["slow"], d["health"]
        rows.append(
            (
                d["label"],
                _num(d["offered_fast_per_s"], 1),
                _num(d["achieved_fast_per_s"], 1),
                _latency(fast["p50_ms"], timeout),
                _latency(fast["p99_ms"], timeout),
                _num(fast["max_ms"], 1),
                f"{fast['failed']}/{fast['calls']}",
                f"{slow['ok']}/{slow['failed']}",
                _latency(health["p99_ms"], health_timeout),
                f"{d['health_over_1s']}/{health['failed']}/{health['calls']}",
                _num(d["rss_mb_max"]),
                _num(d["anon_mb_max"]),
            )
        )
    return rows


OPEN_LOOP_HEADER = (
    "design",
    "offered/s",
    "fast/s",
    "p50",
    "p99",
    "max",
    "fast fail",
    "slow ok/fail",
    "health p99",
    ">1s/fail/n",
    "RSS MB",
    "anon MB",
)
OPEN_LOOP_WIDTHS = (28, 10, 8, 8, 8, 8, 11, 13, 11, 11, 8, 8)


def _apart_rows(mixed: dict) -> list[tuple[str, ...]]:
    rows = []
    for d in mixed["designs"].values():
        sat, h = d["saturation"] or {}, d["hold"]
        rows.append(
            (
                d["label"],
                _num(sat.get("requests_per_s")),
                _num(sat.get("p99_ms"), 1),
                f"{h['held_at_once']} of {h['calls']}",
                f"{h['gathered_in_s']:.2f}",
                f"{h['idle']['rss_mb']:.0f} ({h['idle']['anon_mb']:.0f})",
                f"{h['holding']['rss_mb']:.0f} ({h['holding']['anon_mb']:.0f})",
                str(h["holding"]["processes"]),
            )
        )
    return rows


APART_HEADER = (
    "design",
    "wrk req/s",
    "p99",
    "held at once",
    "in s",
    "idle MB",
    "holding MB",
    "processes",
)
APART_WIDTHS = (28, 10, 8, 14, 8, 12, 12, 11)


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


def _headline(mixed: dict) -> str:
    s = mixed["shape"]
    slow_share = 100 / s["slow_every"]
    return (
        f"open loop: {s['rate']:g} calls/s (Poisson, seed {s['seed']}), "
        f"{100 - slow_share:.0f}% /api/hello.py, {slow_share:.0f}% /api/slow.py (sleeps 2 s), "
        f"1 health probe/s; {s['seconds']:g} s counted after {s['settle_seconds']:g} s; "
        f"timeouts {s['call_timeout_s']:g} s (calls), {s['health_timeout_s']:g} s (health); "
        f"at most {s['max_in_flight']} calls in flight"
    )


def _notes(mixed: dict) -> list[str]:
    lines = []
    for d in mixed["designs"].values():
        c = d["client"]
        why = ", ".join(f"{n} {reason}" for reason, n in d["failures"].items()) or "none"
        lines.append(
            f"{d['label']}: failed calls by reason: {why}; client: most in flight "
            f"{c['peak_in_flight']}, send lag p99 {_num(c['lag_p99_ms'], 1)} ms; "
            f"fast p99 from send {_num(d['fast']['p99_from_send_ms'], 1)} ms"
        )
    lines += [
        f"wrk req/s, new / today: {_x(mixed.get('saturation_ratio'))}; "
        f"new design holding / today's idle: RSS {_x(mixed.get('hold_rss_ratio'))}, "
        f"anonymous {_x(mixed.get('hold_anon_ratio'))}",
    ]
    return lines + [f"note: {note}" for note in mixed.get("notes", [])]


def text(mixed: dict) -> str:
    s = mixed["shape"]
    lines = [
        _headline(mixed),
        *_text_table(OPEN_LOOP_HEADER, OPEN_LOOP_WIDTHS, _open_loop_rows(mixed)),
        OPEN_LOOP_LEGEND,
        "",
        f"apart: wrk {s['saturation_connections']} connections on the fast calls alone "
        f"({s['saturation_seconds'] or 'not run, 0'} s); holding test (calls waiting in "
        "/api/gather.py)",
        *_text_table(APART_HEADER, APART_WIDTHS, _apart_rows(mixed)),
        APART_LEGEND,
        *_notes(mixed),
    ]
    return "\n".join(lines)


def markdown(mixed: dict) -> str:
    return "\n".join(
        [
            _headline(mixed),
            "",
            *_markdown_table(OPEN_LOOP_HEADER, _open_loop_rows(mixed)),
            "",
            *_markdown_table(APART_HEADER, _apart_rows(mixed)),
            "",
            *_notes(mixed),
        ]
    )


OPEN_LOOP_LEGEND = """\
offered/s, fast/s: fast calls due a second, and answered 200 within the timeout.
p50, p99, max (ms): fast calls, from the time each was due (so a stall counts in full); a
  failed call counts as its timeout (">10s"); max is of the answered ones.
fast fail: failed / due; slow ok/fail: slow calls answered 200 / failed.
health p99 (ms): a failed probe counts as 5 s; >1s/fail/n: probes answered after more
  than 1 s / failed / due.
RSS MB, anon MB: the most, summed over master, workers and plane, sampled once a second;
  anon counts each anonymous page once however many processes share it (Pss_Anon)."""

APART_LEGEND = """\
wrk req/s, p99: saturation throughput of the fast calls alone (closed loop; no goal).
held at once: the most calls waiting in the script together, of those sent at once; in s:
  until all arrived (or the window closed). MB: RSS (anon) summed over master, workers
  and plane, idle before the calls and while they wait."""
