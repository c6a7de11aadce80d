"""Every metric of a request, each described once (name, labels, help, multiprocess
mode): the Metrics class (metrics.py) builds them from these tables, and the help texts
of refusals are read from the refusals table. Also the scripts' revision, a gauge read
at each scrape rather than counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from service.refusals import CALLER_REFUSALS, REJECTED, reasons
from service.scripts.revision import current_revision

# HTTP latencies from 5 ms up; the top buckets sit above SCRIPT_TIMEOUT (30 s by default)
# and above the largest per-script TIMEOUT, so a timed-out call lands in a finite bucket.
ERROR_KINDS = ("exception", "import", "timeout", "memory", "crashed")
BASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def buckets_for(max_timeout: float) -> tuple[float, ...]:
    top = float(max_timeout) + 1.0
    return tuple(sorted({*BASE_BUCKETS, top}))


INF = float("inf")
REQUEST_LABELS = ("zone", "script", "method", "status")
ERROR_LABELS = ("zone", "script", "kind")
HISTOGRAM_LABELS = ("zone", "script")  # every histogram here: requests' and jobs'


# The metrics of a request, each described once: attribute -> (name, labels, help).
COUNTERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "requests": (
        "scriptgate_requests",
        REQUEST_LABELS,
        "Requests answered, by zone, script, method and HTTP status.",
    ),
    "script_errors": (
        "scriptgate_script_errors",
        ERROR_LABELS,
        "Script failures by kind: exception, import, timeout, memory, crashed (runner died).",
    ),
    "backoffs": (
        "scriptgate_script_backoffs",
        ("zone", "script"),
        "Scripts backed off after their import timed out (calls get 503 for a while).",
    ),
    "auth_denied": (
        "scriptgate_auth_denied",
        ("zone", "reason"),
        "Requests refused before any script ran, by reason.",
    ),
    "rejected": (
        "scriptgate_requests_rejected",
        ("zone", "script", "reason"),
        f"Requests refused at once by a limit, by reason ({', '.join(reasons(REJECTED))}).",
    ),
    # Per key: `caller` is a configured key id or "anonymous", so it stays bounded.
    "caller_requests": (
        "scriptgate_caller_requests",
        ("zone", "script", "caller"),
        "Requests by the key that made them (a configured key id, or anonymous).",
    ),
    "caller_refusals": (
        "scriptgate_caller_refusals",
        ("zone", "caller", "reason"),
        f"Calls of a known key refused by its own limits: {', '.join(CALLER_REFUSALS)}.",
    ),
}
# attribute -> (name, labels, multiprocess mode, help). live*: a dead worker's value
# vanishes with it (it is no longer in flight).
GAUGES: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "in_progress": (
        "scriptgate_requests_in_progress",
        ("zone",),
        "livesum",
        "Requests being handled now, summed over live workers.",
    ),
    "script_in_progress": (
        "scriptgate_script_requests_in_progress",
        ("zone", "script"),
        "livesum",
        "Calls of a script running now, summed over live workers.",
    ),
    # max, not livemax: a setting outlives the worker that read it (a recycled one); a
    # lowered limit shows the old one until the server restarts.
    "concurrency_limit": (
        "scriptgate_script_concurrency_limit",
        ("zone", "script"),
        "max",
        "A script's CONCURRENCY (calls at once across the server); absent: no limit.",
    ),
    "build_info": (
        "scriptgate_build_info",
        ("version",),
        "livemax",
        "Always 1; the version label says which Scriptgate runs.",
    ),
}


class RevisionCollector:
    """`scriptgate_scripts_revision_info{revision}` = 1, read from the scripts link at each
    scrape, so every replica says which commit it serves; absent for a plain folder."""

    def __init__(self, scripts_dir: Path) -> None:
        self.scripts_dir = scripts_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        revision = current_revision(self.scripts_dir)
        if revision is not None:
            family = GaugeMetricFamily(
                "scriptgate_scripts_revision_info",
                "Always 1; the revision label is the git commit of the scripts being served.",
                labels=["revision"],
            )
            family.add_metric([revision], 1)
            yield family
