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
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_MAX_MODES = ("max", "livemax")
_MIN_MODES = ("min", "livemin")
_SUM_MODES = ("sum", "livesum")


class FastMultiProcessCollector:
    def __init__(self, path: str) -> None:
        self.path = path
        # raw key -> (metric name, sample name, labels dict, help text, le or None, base)
        self._parsed: dict[str, tuple[str, str, dict[str, str], str, float | None, tuple]] = {}
        self._prefixes: dict[tuple[str, str | None, str], str] = {}

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
            try:
                values = MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:  # a live gauge file removed since the glob
                continue
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
        merged, fallback = self._merge()
        families: dict[str, Metric] = {}
        for (typ, _), values in merged.items():
            if typ == "histogram":
                self._histograms(values, families)
                continue
            for key, value in values.items():
                metric_name, name, labels, help_text, _, _ = self._parse(key)
                family = families.get(metric_name)
                if family is None:
                    family = families[metric_name] = Metric(metric_name, help_text, typ)
                family.samples.append(Sample(name, labels, value))
        yield from families.values()
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
        blocks: dict[str, tuple[str, str, list[str]]] = {}  # metric -> (type, help, lines)
        for (typ, _), values in merged.items():
            if typ == "histogram":
                self._histogram_lines(values, blocks)
                continue
            for key, value in values.items():
                metric_name, _, _, help_text, _, _ = self._parse(key)
                block = blocks.get(metric_name)
                if block is None:
                    block = blocks[metric_name] = (typ, help_text, [])
                block[2].append(self._prefix(key) + floatToGoString(value))
        out = []
        for metric_name, (typ, help_text, lines) in blocks.items():
            name = metric_name + "_total" if typ == "counter" else metric_name
            out.append(f"# HELP {name} {_escape_help(help_text)}\n# TYPE {name} {typ}\n")
            out.append("\n".join(lines))
            out.append("\n")
        return "".join(out).encode("utf-8")

    def _prefix(self, key: str, le: str | None = None, suffix: str = "") -> str:
        cache_key = (key, le, suffix)
        prefix = self._prefixes.get(cache_key)
        if prefix is None:
            _, name, labels, _, _, base = self._parse(key)
            items = list(base) if le is not None or suffix else sorted(labels.items())
            if le is not None:
                items = sorted([*items, ("le", le)])
            sample = (name.rsplit("_", 1)[0] + suffix) if suffix else name
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in items)
            prefix = self._prefixes[cache_key] = (
                f"{sample}{{{rendered}}} " if rendered else f"{sample} "
            )
        return prefix

    def _histograms(self, values: dict[str, float], families: dict[str, Metric]) -> None:
        buckets: dict[tuple[str, tuple], list[tuple[float, float]]] = defaultdict(list)
        sums: dict[tuple[str, tuple], tuple[str, dict[str, str], float]] = {}
        helps: dict[str, str] = {}
        for key, value in values.items():
            metric_name, name, labels, help_text, le, base = self._parse(key)
            helps[metric_name] = help_text
            if le is None:
                sums[(metric_name, base)] = (name, labels, value)
            else:
                buckets[(metric_name, base)].append((le, value))
        for (metric_name, base), series in buckets.items():
            family = families.get(metric_name)
            if family is None:
                family = families[metric_name] = Metric(
                    metric_name, helps[metric_name], "histogram"
                )
            labels = dict(base)
            total = 0.0
            for le, value in sorted(series):
                total += value
                family.samples.append(
                    Sample(metric_name + "_bucket", {**labels, "le": floatToGoString(le)}, total)
                )
            family.samples.append(Sample(metric_name + "_count", labels, total))
            sum_entry = sums.get((metric_name, base))
            if sum_entry is not None:
                family.samples.append(Sample(sum_entry[0], sum_entry[1], sum_entry[2]))

    def _histogram_lines(
        self, values: dict[str, float], blocks: dict[str, tuple[str, str, list[str]]]
    ) -> None:
        series: dict[tuple[str, tuple], list[tuple[float, str, float]]] = defaultdict(list)
        sums: dict[tuple[str, tuple], tuple[str, float]] = {}
        for key, value in values.items():
            metric_name, _, _, help_text, le, base = self._parse(key)
            if metric_name not in blocks:
                blocks[metric_name] = ("histogram", help_text, [])
            if le is None:
                sums[(metric_name, base)] = (key, value)
            else:
                series[(metric_name, base)].append((le, key, value))
        for (metric_name, base), buckets in series.items():
            lines = blocks[metric_name][2]
            total = 0.0
            for le, key, value in sorted(buckets):
                total += value
                lines.append(self._prefix(key, floatToGoString(le)) + floatToGoString(total))
            sum_key, sum_value = sums.get((metric_name, base), (None, 0.0))
            if sum_key is not None:
                lines.append(self._prefix(sum_key, suffix="_count") + floatToGoString(total))
                lines.append(self._prefix(sum_key) + floatToGoString(sum_value))


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


__all__ = ["FastMultiProcessCollector"]
