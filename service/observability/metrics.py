"""Metric objects, the registry they live in, and exposition for one app.

Under gunicorn `PROMETHEUS_MULTIPROC_DIR` is set before prometheus_client is imported,
so every worker writes its values to files there and a scrape sums them (see
`multiproc.py`). Without it (unit tests, `flask run`) the app's own registry holds them.

A call whose server span is sampled leaves its trace id as the exemplar of its request
counter, its duration bucket and its error counter: in the workers' exemplar files
(`exemplars.py`) under gunicorn, in prometheus_client's own values without it. Only the
OpenMetrics exposition shows them; the text format has no place for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest

from service.observability import multiproc
from service.observability.collector import FastMultiProcessCollector
from service.observability.exemplars import Reader, Recorder, bucket_keys, counter_key
from service.refusals import CALLER_REFUSALS, REJECTED, reasons
from service.scripts.revision import current_revision

# HTTP latencies from 5 ms up; the top buckets sit above SCRIPT_TIMEOUT (30 s by default)
# and above the largest per-script TIMEOUT, so a timed-out call lands in a finite bucket.
ERROR_KINDS = ("exception", "import", "timeout", "memory", "crashed")
BASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def buckets_for(max_timeout: float) -> tuple[float, ...]:
    top = float(max_timeout) + 1.0
    return tuple(sorted({*BASE_BUCKETS, top}))


@dataclass(frozen=True)
class Totals:
    """What /_platform/health and ?format=json report; platform calls are not counted."""

    requests_total: int
    errors_total: int
    requests_by_area: dict[str, int]


INF = float("inf")
REQUEST_LABELS = ("zone", "script", "method", "status")
ERROR_LABELS = ("zone", "script", "kind")
HISTOGRAM_LABELS = ("zone", "script")  # every histogram here: requests' and jobs'


class Metrics:
    def __init__(
        self,
        version: str,
        max_timeout: float,
        multiproc_dir: Path | None,
        exemplars: bool = True,
    ) -> None:
        self.multiproc_dir = multiproc_dir
        self.exemplars = exemplars
        # Where this process's exemplars go under gunicorn (None: prometheus_client's).
        self.recorder = Recorder(multiproc_dir) if exemplars and multiproc_dir else None
        own = CollectorRegistry()

        def counter(name: str, labels: str, doc: str) -> Counter:
            return Counter(name, doc, labels.split(), registry=own)

        def gauge(name: str, labels: str, mode: str, doc: str) -> Gauge:
            # live*: a dead worker's value vanishes with it (it is no longer in flight).
            return Gauge(name, doc, labels.split(), registry=own, multiprocess_mode=mode)

        self.requests = counter(
            "scriptgate_requests",
            " ".join(REQUEST_LABELS),
            "Requests answered, by zone, script, method and HTTP status.",
        )
        self.duration_bounds = (*buckets_for(max_timeout), INF)
        self.duration = Histogram(
            "scriptgate_request_duration_seconds",
            "Time from receiving a request to handing back its response.",
            HISTOGRAM_LABELS,
            buckets=self.duration_bounds,
            registry=own,
        )
        self.script_errors = counter(
            "scriptgate_script_errors",
            " ".join(ERROR_LABELS),
            "Script failures by kind: exception, import, timeout, memory, crashed (runner died).",
        )
        self.backoffs = counter(
            "scriptgate_script_backoffs",
            "zone script",
            "Scripts backed off after their import timed out (calls get 503 for a while).",
        )
        self.auth_denied = counter(
            "scriptgate_auth_denied",
            "zone reason",
            "Requests refused before any script ran, by reason.",
        )
        self.rejected = counter(
            "scriptgate_requests_rejected",
            "zone script reason",
            f"Requests refused at once by a limit, by reason ({', '.join(reasons(REJECTED))}).",
        )
        # Per key: `caller` is a configured key id or "anonymous", so it stays bounded.
        self.caller_requests = counter(
            "scriptgate_caller_requests",
            "zone script caller",
            "Requests by the key that made them (a configured key id, or anonymous).",
        )
        self.caller_refusals = counter(
            "scriptgate_caller_refusals",
            "zone caller reason",
            f"Calls of a known key refused by its own limits: {', '.join(CALLER_REFUSALS)}.",
        )
        self.in_progress = gauge(
            "scriptgate_requests_in_progress",
            "zone",
            "livesum",
            "Requests being handled now, summed over live workers.",
        )
        self.script_in_progress = gauge(
            "scriptgate_script_requests_in_progress",
            "zone script",
            "livesum",
            "Calls of a script running now, summed over live workers.",
        )
        self.concurrency_limit = gauge(
            "scriptgate_script_concurrency_limit",
            "zone script",
            # max, not livemax: a setting outlives the worker that read it (a recycled
            # one); a lowered limit shows the old one until the server restarts.
            "max",
            "A script's CONCURRENCY (calls at once across the server); absent: no limit.",
        )
        self.build_info = gauge(
            "scriptgate_build_info",
            "version",
            "livemax",
            "Always 1; the version label says which Scriptgate runs.",
        )
        self.build_info.labels(version).set(1)
        self._request_children: dict[tuple[str, str, str, int], _RequestSeries] = {}
        self._error_children: dict[tuple[str, str, str], tuple[Any, str]] = {}
        self._histogram_keys: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._in_progress_children: dict[str, Any] = {}
        self._caller_children: dict[tuple[str, str, str], Any] = {}
        self._script_children: dict[tuple[str, str], Any] = {}
        self._collector: FastMultiProcessCollector | None = None
        self._live = CollectorRegistry()  # read at scrape time: register_live
        if multiproc_dir is None:
            self.registry = own
        else:
            self.registry = CollectorRegistry()
            self._collector = FastMultiProcessCollector(str(multiproc_dir))
            self.registry.register(self._collector)
            self._exemplar_reader = Reader(multiproc_dir)

    def in_progress_for(self, zone: str) -> Any:
        child = self._in_progress_children.get(zone)
        if child is None:
            child = self._in_progress_children[zone] = self.in_progress.labels(zone)
        return child

    def script_started(self, zone: str, script: str) -> Callable[[], None]:
        """Count a call of a script as in flight; the function that ends it."""
        key = (zone, script)
        gauge = self._script_children.get(key)
        if gauge is None:
            gauge = self._script_children[key] = self.script_in_progress.labels(zone, script)
        gauge.inc()
        return gauge.dec  # type: ignore[no-any-return]

    def observe_request(
        self,
        zone: str,
        script: str,
        method: str,
        status: int,
        seconds: float,
        trace_id: str | None = None,
    ) -> None:
        """Count one answered request and its duration; with the trace id of a sampled
        call, make it the exemplar of both.

        The label children are cached: prometheus_client's labels() validates and locks
        on every call, which is most of the cost of counting a request. So are the
        series' exemplar keys, built once per label set.
        """
        key = (zone, script, method, status)
        series = self._request_children.get(key)
        if series is None:
            series = self._request_children[key] = self._request_series(*key)
        if trace_id is None or not self.exemplars:
            series.count.inc()
            series.duration.observe(seconds)
        elif self.recorder is None:
            exemplar = {"trace_id": trace_id}
            series.count.inc(exemplar=exemplar)
            series.duration.observe(seconds, exemplar)
        else:
            series.count.inc()
            series.duration.observe(seconds)
            self.recorder.counter(series.count_key, trace_id)
            self.recorder.observe(series.bucket_keys, self.duration_bounds, trace_id, seconds)

    def _request_series(self, zone: str, script: str, method: str, status: int) -> _RequestSeries:
        values = (zone, script, method, str(status))
        return _RequestSeries(
            self.requests.labels(*values),
            self.duration.labels(zone, script),
            counter_key(self.requests, REQUEST_LABELS, values),
            self.histogram_keys(self.duration, self.duration_bounds, (zone, script)),
        )

    def histogram_keys(
        self, histogram: Histogram, bounds: tuple[float, ...], values: tuple[str, str]
    ) -> tuple[str, ...]:
        """The exemplar keys of one (zone, script) histogram's buckets, built once."""
        name = histogram.describe()[0].name
        keys = self._histogram_keys.get((name, values))
        if keys is None:
            keys = self._histogram_keys[(name, values)] = bucket_keys(
                histogram, HISTOGRAM_LABELS, values, bounds
            )
        return keys

    def observe(
        self,
        histogram: Histogram,
        bounds: tuple[float, ...],
        values: tuple[str, str],
        seconds: float,
        trace_id: str | None,
    ) -> None:
        """Observe a (zone, script) histogram of this registry, with an exemplar when the
        trace id of a sampled call is given (jobs' histograms)."""
        child = histogram.labels(*values)
        if trace_id is None or not self.exemplars:
            child.observe(seconds)
        elif self.recorder is None:
            child.observe(seconds, {"trace_id": trace_id})
        else:
            child.observe(seconds)
            keys = self.histogram_keys(histogram, bounds, values)
            self.recorder.observe(keys, bounds, trace_id, seconds)

    def count_error(self, zone: str, script: str, kind: str, trace_id: str | None) -> None:
        """Count a script failure; a sampled call's trace id becomes its exemplar."""
        key = (zone, script, kind)
        children = self._error_children.get(key)
        if children is None:
            child = self.script_errors.labels(*key)
            children = self._error_children[key] = (
                child,
                counter_key(self.script_errors, ERROR_LABELS, key),
            )
        if trace_id is None or not self.exemplars:
            children[0].inc()
        elif self.recorder is None:
            children[0].inc(exemplar={"trace_id": trace_id})
        else:
            children[0].inc()
            self.recorder.counter(children[1], trace_id)

    def register_live(self, collector: Any) -> None:
        """A collector asked at each scrape, not read from the workers' files: the job
        queue's depth is one store query, the same whichever worker answers."""
        self._live.register(collector)

    def count_caller(self, zone: str, script: str, caller: str) -> None:
        key = (zone, script, caller)
        child = self._caller_children.get(key)
        if child is None:
            child = self._caller_children[key] = self.caller_requests.labels(zone, script, caller)
        child.inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Render the registry: text 0.0.4, or OpenMetrics when Accept asks for it."""
        encoder, content_type = choose_encoder(accept or "")
        with multiproc.reading(self.multiproc_dir):
            if self._collector is None:
                return encoder(_Both(self.registry, self._live)), content_type
            if encoder is generate_latest:
                body = self._collector.render_text()
                if body is not None:
                    return body + generate_latest(self._live), content_type
                return encoder(_Both(self.registry, self._live)), content_type
            # OpenMetrics: the only format with exemplars, merged from every process.
            exemplars = self._exemplar_reader.latest() if self.exemplars else {}
            body = self._collector.render_openmetrics(exemplars)
            if body is not None:  # the live registry's part ends with `# EOF`
                return body + encoder(self._live), content_type
            collector = self._collector
            merged = _Collect(lambda: collector.collect_with_exemplars(exemplars))
            return encoder(_Both(merged, self._live)), content_type  # type: ignore[arg-type]

    def totals(self) -> Totals:
        """Sum the counters the same way a scrape does, so health and metrics agree."""
        by_area = {"root": 0, "api": 0, "admin": 0}
        errors = 0.0
        with multiproc.reading(self.multiproc_dir):
            if self._collector is not None:  # counters only: health skips the histograms
                samples = list(self._collector.counter_samples())
            else:
                samples = [s for family in self.registry.collect() for s in family.samples]
        for sample in samples:
            if sample.name == "scriptgate_requests_total":
                zone = sample.labels.get("zone", "")
                if zone in by_area:
                    by_area[zone] += int(sample.value)
            elif sample.name == "scriptgate_script_errors_total":
                errors += sample.value
        return Totals(sum(by_area.values()), int(errors), by_area)


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


@dataclass(frozen=True)
class _RequestSeries:
    """One (zone, script, method, status): its children and its exemplar keys."""

    count: Any
    duration: Any
    count_key: str
    bucket_keys: tuple[str, ...]


class _Collect:
    """A function returning families, as the collector prometheus_client's encoders want."""

    def __init__(self, collect: Callable[[], Iterator[Any]]) -> None:
        self.collect = collect


class _Both:
    """Two registries as one, for prometheus_client's encoders."""

    def __init__(self, *registries: CollectorRegistry | _Collect) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self.registries:
            yield from registry.collect()
