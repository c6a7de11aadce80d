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
from prometheus_client.exposition import choose_encoder, generate_latest

from service.observability import multiproc
from service.observability.catalog import (
    COUNTERS,
    ERROR_LABELS,
    GAUGES,
    HISTOGRAM_LABELS,
    INF,
    REQUEST_LABELS,
    buckets_for,
)
from service.observability.collector import FastMultiProcessCollector
from service.observability.exemplars import Reader, Recorder, bucket_keys, counter_key


@dataclass(frozen=True)
class Totals:
    """What /_platform/health and ?format=json report; platform calls are not counted."""

    requests_total: int
    errors_total: int
    requests_by_area: dict[str, int]


class Metrics:
    requests: Counter
    script_errors: Counter
    backoffs: Counter
    auth_denied: Counter
    rejected: Counter
    caller_requests: Counter
    caller_refusals: Counter
    in_progress: Gauge
    script_in_progress: Gauge
    concurrency_limit: Gauge
    build_info: Gauge

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
        for attribute, (name, labels, doc) in COUNTERS.items():
            setattr(self, attribute, Counter(name, doc, labels, registry=own))
        for attribute, (name, labels, mode, doc) in GAUGES.items():
            gauge = Gauge(name, doc, labels, registry=own, multiprocess_mode=mode)
            setattr(self, attribute, gauge)
        self.duration_bounds = (*buckets_for(max_timeout), INF)
        self.duration = Histogram(
            "scriptgate_request_duration_seconds",
            "Time from receiving a request to handing back its response.",
            HISTOGRAM_LABELS,
            buckets=self.duration_bounds,
            registry=own,
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
