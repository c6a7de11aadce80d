"""A multiprocess collector whose cost does not grow with the number of worker files.

prometheus_client's MultiProcessCollector turns every value of every file into a Sample
and merges them afterwards, parsing each series key again on every scrape. Here values
are first summed (or maxed) by their raw key string, which is identical across files,
so each series is parsed once per scrape, and the parse is kept between scrapes. The
output is the same families MultiProcessCollector yields (tests compare the two).
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from service.observability.multiproc import read_values

_MAX_MODES = ("max", "livemax")
_MIN_MODES = ("min", "livemin")
_SUM_MODES = ("sum", "livesum")

# One output sample: raw key, `le` value or None, name suffix ("_count" or ""), value.
Row = tuple[str, str | None, str, float]
Family = tuple[str, str, list[Row]]  # type, help text, rows


class FastMultiProcessCollector:
    def __init__(self, path: str) -> None:
        self.path = path
        # raw key -> (metric name, sample name, labels dict, help text, le or None, base)
        self._parsed: dict[str, tuple[str, str, dict[str, str], str, float | None, tuple]] = {}
        self._shapes: dict[tuple[str, str | None, str], tuple[str, dict[str, str], str]] = {}

    def _parse(self, key: str) -> tuple[str, str, dict[str, str], str, float | None, tuple]:
        parsed = self._parsed.get(key)
        if parsed is None:
            metric_name, name, labels, help_text = json.loads(key)
            le = float(labels["le"]) if "le" in labels else None
            base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            parsed = self._parsed[key] = (metric_name, name, labels, help_text, le, base)
        return parsed

    def _merge(
        self, kinds: tuple[str, ...] | None = None
    ) -> tuple[dict[tuple[str, str], dict[str, float]], list[str]]:
        """Merge all files by raw key: {(type, how): {key: value}}, plus files to leave to
        prometheus_client ('all' and 'mostrecent' gauges keep per-pid detail)."""
        merged: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        fallback = []
        for path in glob.glob(os.path.join(self.path, "*.db")):
            parts = os.path.basename(path).split("_")
            typ = parts[0]
            if kinds is not None and typ not in kinds:
                continue
            how = "sum"
            if typ == "gauge":
                mode = parts[1]
                if mode in _MAX_MODES:
                    how = "max"
                elif mode in _MIN_MODES:
                    how = "min"
                elif mode not in _SUM_MODES:
                    fallback.append(path)
                    continue
            values = read_values(path)
            target = merged[(typ, how)]
            if how == "sum":
                for key, value, _, _ in values:
                    target[key] = target.get(key, 0.0) + value
            else:
                pick = max if how == "max" else min
                for key, value, _, _ in values:
                    target[key] = pick(target[key], value) if key in target else value
        return merged, fallback

    def collect(self) -> Iterator[Metric]:
        return self.collect_with_exemplars({})

    def collect_with_exemplars(self, exemplars: Mapping[str, Exemplar]) -> Iterator[Metric]:
        """The families, each bucket and counter sample with the exemplar of its raw key
        (service/observability/exemplars.py keeps them under the same keys as the values)."""
        merged, fallback = self._merge()
        for metric_name, (typ, help_text, rows) in self._families(merged).items():
            family = Metric(metric_name, help_text, typ)
            for key, le, suffix, value in rows:
                name, labels, _ = self._shape(key, le, suffix)
                # A _count row reuses its last bucket's key: never its exemplar.
                exemplar = exemplars.get(key) if exemplars and not suffix else None
                family.samples.append(Sample(name, labels, value, None, exemplar))
            yield family
        if fallback:
            yield from MultiProcessCollector.merge(fallback, accumulate=True)

    def counter_samples(self) -> Iterator[Sample]:
        """Every counter series summed over all workers, without touching histograms."""
        merged, _ = self._merge(kinds=("counter",))
        for key, value in merged.get(("counter", "sum"), {}).items():
            _, name, labels, _, _, _ = self._parse(key)
            yield Sample(name, labels, value)

    def render_text(self) -> bytes | None:
        """Text format 0.0.4 straight from the merged values, or None to use the generic
        encoder (files this renderer does not handle).

        Each series' `name{labels} ` prefix is rendered once and kept, so a scrape is a
        merge plus string joins.
        """
        merged, fallback = self._merge()
        if fallback:
            return None
        out = []
        for metric_name, (typ, help_text, rows) in self._families(merged).items():
            name = metric_name + "_total" if typ == "counter" else metric_name
            out.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {typ}\n")
            out.extend(
                self._shape(key, le, suffix)[2] + floatToGoString(value) + "\n"
                for key, le, suffix, value in rows
            )
        return "".join(out).encode("utf-8")

    def render_openmetrics(self, exemplars: Mapping[str, Exemplar]) -> bytes | None:
        """OpenMetrics straight from the merged values, each bucket and counter sample
        followed by its exemplar, without the closing `# EOF` (the caller appends the
        rest of the registry); None to use the generic encoder, as render_text.

        What prometheus_client's OpenMetrics encoder writes for these families (a test
        compares them), at the cost of the text renderer: its encoder builds a Sample per
        row and formats each label again on every scrape (4 to 7 times slower at 30
        scripts, docs/performance.md).
        """
        merged, fallback = self._merge()
        if fallback:
            return None
        out = []
        for metric_name, (typ, help_text, rows) in self._families(merged).items():
            out.append(f"# HELP {metric_name} {_escape_label(help_text)}\n")
            out.append(f"# TYPE {metric_name} {typ}\n")
            for key, le, suffix, value in rows:
                line = self._shape(key, le, suffix)[2] + floatToGoString(value)
                exemplar = exemplars.get(key) if exemplars and not suffix else None
                out.append(line + _exemplar_text(exemplar) + "\n" if exemplar else line + "\n")
        return "".join(out).encode("utf-8")

    def _families(self, merged: dict[tuple[str, str], dict[str, float]]) -> dict[str, Family]:
        """metric name -> (type, help, rows), histograms accumulated as the format wants."""
        families: dict[str, Family] = {}
        for (typ, _), values in merged.items():
            if typ == "histogram":
                self._histogram_rows(values, families)
                continue
            for key, value in values.items():
                metric_name, _, _, help_text, _, _ = self._parse(key)
                families.setdefault(metric_name, (typ, help_text, []))[2].append(
                    (key, None, "", value)
                )
        return families

    def _histogram_rows(self, values: dict[str, float], families: dict[str, Family]) -> None:
        """Cumulative buckets, then _count (the last bucket), then _sum, per label set."""
        buckets: dict[tuple[str, tuple], list[tuple[float, str, float]]] = defaultdict(list)
        sums: dict[tuple[str, tuple], tuple[str, float]] = {}
        for key, value in values.items():
            metric_name, _, _, help_text, le, base = self._parse(key)
            families.setdefault(metric_name, ("histogram", help_text, []))
            if le is None:
                sums[(metric_name, base)] = (key, value)
            else:
                buckets[(metric_name, base)].append((le, key, value))
        for (metric_name, base), series in buckets.items():
            rows = families[metric_name][2]
            total = 0.0
            for le, key, value in sorted(series):
                total += value
                rows.append((key, floatToGoString(le), "", total))
            rows.append((key, None, "_count", total))
            if (metric_name, base) in sums:
                sum_key, sum_value = sums[(metric_name, base)]
                rows.append((sum_key, None, "", sum_value))

    def _shape(self, key: str, le: str | None, suffix: str) -> tuple[str, dict[str, str], str]:
        """(sample name, labels, rendered `name{labels} ` prefix) of one row, kept."""
        cache_key = (key, le, suffix)
        shape = self._shapes.get(cache_key)
        if shape is None:
            _, name, labels, _, _, base = self._parse(key)
            if le is not None:
                labels = {**dict(base), "le": le}
            elif suffix:  # _count of a histogram, named after its bucket series
                name = name.rsplit("_", 1)[0] + suffix
                labels = dict(base)
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
            prefix = f"{name}{{{rendered}}} " if rendered else f"{name} "
            shape = self._shapes[cache_key] = (name, labels, prefix)
        return shape


def _exemplar_text(exemplar: Exemplar) -> str:
    """` # {labels} value timestamp`, as prometheus_client's OpenMetrics encoder writes it."""
    labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(exemplar.labels.items()))
    text = f" # {{{labels}}} {floatToGoString(exemplar.value)}"
    return text if exemplar.timestamp is None else f"{text} {exemplar.timestamp}"


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


__all__ = ["FastMultiProcessCollector"]
