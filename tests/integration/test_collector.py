"""The fast multiprocess collector says exactly what prometheus_client's own says."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.observability import multiproc
from service.observability.collector import FastMultiProcessCollector
from tests.servers import gunicorn, wait_until


def families(collector) -> dict:
    """name -> (type, sorted samples) for an order-independent comparison."""
    out = {}
    for family in collector.collect():
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples)
        out[family.name] = (family.type, samples)
    return out


def test_fast_collector_matches_prometheus_client_over_live_and_dead_workers(tmp_path: Path):
    scripts = tmp_path / "scripts"
    (scripts / "api").mkdir(parents=True)
    for i in range(5):
        (scripts / f"s{i}.py").write_text(f"def main(request):\n    return 'v{i}'\n")
    (scripts / "bad.py").write_text("def main(request):\n    raise ValueError\n")
    metrics_dir = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "SCRIPTGATE_MAX_REQUESTS": "15"}
    with gunicorn(scripts, tmp_path, workers=3, env=env) as server:
        for round_ in range(15):  # enough to recycle workers: archives plus live files
            for i in range(5):
                assert server.get(f"/s{i}.py").status_code == 200
            server.get("/bad.py")
            server.get(f"/missing-{round_}.py")
        wait_until(
            lambda: any(p.name.endswith("_archive.db") for p in metrics_dir.iterdir()),
            timeout=20,
            what="a recycled worker's files folded into the archive",
        )
        served = server.get("/_platform/metrics").text
        collector = FastMultiProcessCollector(str(metrics_dir))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(metrics_dir))
        with multiproc.reading(metrics_dir):  # as a scrape does: no compaction meanwhile
            fast = families(collector)
            reference = families(MultiProcessCollector(None, str(metrics_dir)))
            rendered = collector.render_text().decode()
            expected = generate_latest(registry).decode()
    assert fast == reference
    # The hand-rendered text says the same as prometheus_client's encoder, line for line.
    assert sorted(rendered.splitlines()) == sorted(expected.splitlines())
    assert "scriptgate_requests_total{" in served
    assert fast["scriptgate_requests"][1]  # not trivially equal: there is data


def test_fast_collector_renders_valid_text(tmp_path: Path):
    registry = CollectorRegistry()
    registry.register(FastMultiProcessCollector(str(tmp_path)))
    assert generate_latest(registry) == b""  # an empty directory is an empty exposition
