"""Job metrics: what happened to jobs (counted where it happened) and the queue now.

Counters and histograms are written by the process that saw the event (a web worker
queues or cancels, a job worker runs), into the same multiprocess files as every other
metric. The queue's depth and age are one store query at scrape time (QueueCollector),
so every replica reports the shared queue as it is, wherever the jobs run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.jobs.store import STATES

if TYPE_CHECKING:
    from service.jobs.queue import JobQueue
    from service.observability.metrics import Metrics

INF = float("inf")
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, INF)
RUN_BUCKETS = (0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, INF)


def sampled_trace_id(traceparent: str) -> str | None:
    """The trace id of a W3C traceparent whose sampled flag is set, else None: a job's
    exemplar links to its trace only if that trace was recorded."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    try:
        return parts[1] if int(parts[3], 16) & 1 else None
    except ValueError:
        return None


class JobMetrics:
    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        # Without multiprocess files the app's own registry is the one scraped.
        registry = CollectorRegistry()
        if metrics is not None and metrics.multiproc_dir is None:
            registry = metrics.registry
        self.jobs = Counter(
            "scriptgate_jobs",
            "Jobs that entered each state, by zone, script and state.",
            ["zone", "script", "state"],
            registry=registry,
        )

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            labels = ["zone", "script"]
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.waited = histogram(
            "scriptgate_job_queued_seconds",
            "Time a job waited in the queue before a job worker started it.",
            WAIT_BUCKETS,
        )
        self.ran = histogram(
            "scriptgate_job_run_seconds",
            "Time a job ran, from its start to its final state.",
            RUN_BUCKETS,
        )
        self.retries = Counter(
            "scriptgate_job_retries",
            "Runs queued again after a failure (RETRIES), by zone and script.",
            ["zone", "script"],
            registry=registry,
        )
        self.final_failures = Counter(
            "scriptgate_job_final_failures",
            "Jobs that failed or timed out with no retry left, by zone and script.",
            ["zone", "script"],
            registry=registry,
        )
        self.event_streams = Gauge(
            "scriptgate_job_event_streams",
            "Clients following a job's events (SSE) now, summed over live processes.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.attempts = Counter(
            "scriptgate_job_attempts",
            "Runs started, by zone, script and attempt (1 for a first run, 2 for its "
            "first retry, ...; 5 stands for 5 and over).",
            ["zone", "script", "attempt"],
            registry=registry,
        )
        self.workers = Gauge(
            "scriptgate_job_workers",
            "Job worker processes alive, summed over live processes.",
            registry=registry,
            multiprocess_mode="livesum",
        )

        self._known: set[tuple[str, str]] = set()

    def observe_wait(self, zone: str, script: str, seconds: float, traceparent: str) -> None:
        self._observe(self.waited, WAIT_BUCKETS, zone, script, seconds, traceparent)

    def observe_run(self, zone: str, script: str, seconds: float, traceparent: str) -> None:
        self._observe(self.ran, RUN_BUCKETS, zone, script, seconds, traceparent)

    def _observe(
        self,
        histogram: Histogram,
        bounds: tuple[float, ...],
        zone: str,
        script: str,
        seconds: float,
        traceparent: str,
    ) -> None:
        """With the job's trace id as the bucket's exemplar when its trace was sampled."""
        if self._metrics is None:
            histogram.labels(zone, script).observe(seconds)
            return
        trace_id = sampled_trace_id(traceparent)
        self._metrics.observe(histogram, bounds, (zone, script), seconds, trace_id)

    def entered(self, zone: str, script: str, state: str) -> None:
        if (zone, script) not in self._known:
            # Every state's series from 0, so increase() sees a script's first failure.
            self._known.add((zone, script))
            for each in STATES:
                self.jobs.labels(zone, script, each)
            self.retries.labels(zone, script)
            self.final_failures.labels(zone, script)
        self.jobs.labels(zone, script, state).inc()


class QueueCollector:
    """scriptgate_jobs_queued, _running, _oldest_queued_age_seconds and
    scriptgate_job_store_up, read from the store when scraped."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "scriptgate_job_store_up", "1 when the job store (SQLite or Redis) answered."
        )
        try:
            stats = self.queue.store.stats()
        except Exception:  # a scrape must still answer; the gauge says what failed
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily(
            "scriptgate_jobs_queued", "Jobs waiting for a job worker.", value=stats.queued
        )
        yield GaugeMetricFamily(
            "scriptgate_jobs_running", "Jobs running in a job worker.", value=stats.running
        )
        age = 0.0 if stats.oldest_queued_at is None else time.time() - stats.oldest_queued_at
        yield GaugeMetricFamily(
            "scriptgate_jobs_oldest_queued_age_seconds",
            "How long the oldest queued job has waited; 0 with an empty queue.",
            value=max(0.0, age),
        )
