"""The holding test: how many waiting scripts a server holds at once, and at what memory.

The bench sends `calls` calls at once to /api/gather.py (bench/mixed_scripts), which
leaves a file in a folder while it waits and returns once the bench writes a `release`
file there. The most files present at once is the count of calls the server holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.servers import http_get

GATHER = "/api/gather.py"
RELEASE = "release"  # the file that ends every waiting gather.py call
ANSWER_TIMEOUT_S = 30.0


def hold_test(
    port: int,
    headers: Mapping[str, str],
    folder: Path,
    memory: Callable[[], dict],
    calls: int,
    window_s: float,
) -> dict:
    """`calls` gather.py calls at once: how many wait together, and memory meanwhile.

    Idle memory is taken first, with no call in flight. The count is the most files
    seen at once in the gather folder, polled until all `calls` are there or
    `window_s` has passed; memory is sampled then, before the release.
    """
    (folder / RELEASE).unlink(missing_ok=True)
    idle = memory()
    started = time.monotonic()
    peak = 0
    with ThreadPoolExecutor(max_workers=calls) as pool:
        answers = [
            pool.submit(http_get, port, GATHER, headers, ANSWER_TIMEOUT_S) for _ in range(calls)
        ]
        try:
            while peak < calls and time.monotonic() - started < window_s:
                peak = max(peak, _waiting(folder))
                time.sleep(0.02)
            gathered_s = time.monotonic() - started
            held = memory()
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


def ratios(today: dict, new: dict) -> dict:
    """The new design's memory while holding its calls over today's when idle."""
    idle, held = today["idle"], new["holding"]
    return {
        "hold_rss_ratio": round(held["rss_mb"] / idle["rss_mb"], 2),
        "hold_anon_ratio": round(held["anon_mb"] / idle["anon_mb"], 2),
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
