"""Drive one contender with wrk and read back throughput and latency percentiles.

wrk is given a Lua `done` hook (wrk_report.lua) that prints exact counts and the p50,
p90 and p99 latencies in microseconds, so nothing is parsed from the human report.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

WRK = "/usr/bin/wrk"
REPORT_HOOK = Path(__file__).with_name("wrk_report.lua")
MARKER = "WRK_JSON "


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx answers together

    def to_dict(self) -> dict:
        return asdict(self)


def wrk_version() -> str:
    done = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run_wrk(
    url: str,
    headers: Mapping[str, str],
    *,
    seconds: int,
    connections: int,
    threads: int,
) -> LoadResult:
    """One wrk run of `seconds`; raises if wrk fails or prints no report."""
    argv = [
        WRK,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        "--timeout=10s",
        f"--script={REPORT_HOOK}",
    ]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    raw = json.loads(line[len(MARKER) :])
    duration = raw["duration_us"] / 1e6
    errors = sum(
        raw[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        requests=raw["requests"],
        seconds=round(duration, 3),
        requests_per_s=round(raw["requests"] / duration, 1) if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=errors,
    )
