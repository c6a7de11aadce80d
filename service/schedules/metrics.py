"""Schedule metrics: what became of each scheduled time, and each schedule now.

`scriptgate_schedule_runs_total{zone,script,outcome}` is counted by the scheduler that
claimed the time (once per cluster, as the claim). The gauges are read from the shared
store at scrape time (ScheduleCollector), so every replica reports the same values:
use max() across instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from service.schedules.backends import open_store
from service.schedules.store import OUTCOMES

if TYPE_CHECKING:
    from service.jobs.queue import JobQueue
    from service.observability.metrics import Metrics


class ScheduleMetrics:
    def __init__(self, metrics: Metrics) -> None:
        # Without multiprocess files the app's own registry is the one scraped.
        registry = metrics.registry if metrics.multiproc_dir is None else CollectorRegistry()
        self.runs = Counter(
            "scriptgate_schedule_runs",
            "Scheduled times by what became of them: started, skipped (the last run was "
            "still running, or the script is paused) or missed (downtime past "
            "SCHEDULE_CATCHUP).",
            ["zone", "script", "outcome"],
            registry=registry,
        )

    def known(self, zone: str, script: str) -> None:
        """Every outcome's series from 0, so increase() sees the first one."""
        for outcome in OUTCOMES:
            self.runs.labels(zone, script, outcome)


_MADE: dict[int, tuple[Metrics, ScheduleMetrics]] = {}


def schedule_metrics(metrics: Metrics) -> ScheduleMetrics:
    """One per app's Metrics: a counter registers its name once per registry."""
    held = _MADE.get(id(metrics))
    if held is None or held[0] is not metrics:
        held = _MADE[id(metrics)] = (metrics, ScheduleMetrics(metrics))
    return held[1]


class ScheduleCollector:
    """scriptgate_schedule_next_run_timestamp_seconds,
    _last_success_timestamp_seconds and _consecutive_failures per script (over its
    cron expressions: the soonest next run, the latest success, the most failures)."""

    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Any]:
        try:
            states = open_store(self.jobs).states()
        except Exception:  # scriptgate_job_store_up says the store is down
            return
        labels = ["zone", "script"]
        following = GaugeMetricFamily(
            "scriptgate_schedule_next_run_timestamp_seconds",
            "When the script's next scheduled run is due (Unix time); in the past when "
            "no scheduler is handling it.",
            labels=labels,
        )
        success = GaugeMetricFamily(
            "scriptgate_schedule_last_success_timestamp_seconds",
            "When the script's last scheduled run that succeeded finished (Unix time).",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "scriptgate_schedule_consecutive_failures",
            "Scheduled runs in a row that failed or timed out, by script.",
            labels=labels,
        )
        per_script: dict[tuple[str, str], list[Any]] = {}
        for state in states:
            item = per_script.setdefault((state.zone, state.script), [None, None, 0])
            if state.next_at is not None:
                item[0] = state.next_at if item[0] is None else min(item[0], state.next_at)
            if state.last_success_at is not None:
                item[1] = max(item[1] or 0.0, state.last_success_at)
            item[2] = max(item[2], state.failures)
        for (zone, script), (next_at, last_ok, failed) in sorted(per_script.items()):
            if next_at is not None:
                following.add_metric([zone, script], next_at)
            if last_ok is not None:
                success.add_metric([zone, script], last_ok)
            failures.add_metric([zone, script], failed)
        yield following
        yield success
        yield failures
