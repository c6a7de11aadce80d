"""Exemplars on real gunicorn with several workers: from a series to the call behind it.

Every call is sampled (OTEL_TRACES_SAMPLER=always_on, as when traces are exported), so
each leaves its trace id as the exemplar of its request counter, its duration bucket and,
if it failed, its error counter, in the worker that served it. Whichever worker answers
the scrape, the OpenMetrics exposition shows every worker's exemplars, the most recent
per series and bucket. One thread per worker, so concurrent calls held at a barrier land
on distinct workers for certain.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.samples import Sample

from service.observability import multiproc
from service.observability.collector import FastMultiProcessCollector
from service.observability.exemplars import Reader
from service.observability.multiproc import read_values
from tests.integration.prom import API, API_KEY, GATHER_SCRIPT, PID_SCRIPT, write_scripts
from tests.prom import PROMTOOL
from tests.servers import Gunicorn, gunicorn, wait_until

WORKERS = 3
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
SCRIPTS = {
    **{f"api/g{n}.py": GATHER_SCRIPT for n in range(WORKERS)},
    "api/pid.py": PID_SCRIPT,
    "api/slow.py": """
        import os, time
        def main(request):
            time.sleep(0.3)
            return {"pid": os.getpid()}
    """,
    "api/boom.py": """
        def main(request):
            raise RuntimeError("boom")
    """,
}
_SAMPLE_LINE = re.compile(r"^(\S+(?:\{.*?\})?) (\S+)( # .*)?$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    tmp = tmp_path_factory.mktemp("exemplars")
    scripts = write_scripts(tmp / "scripts", SCRIPTS)
    env = {
        "API_KEY": API_KEY,
        "OTEL_TRACES_SAMPLER": "always_on",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "JOB_WORKERS": "1",
    }
    with gunicorn(scripts, tmp, workers=WORKERS, env=env, extra_args=("--threads", "1")) as srv:
        yield srv


def openmetrics(server: Gunicorn) -> str:
    response = server.get("/_platform/metrics", headers=OPENMETRICS)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return response.text


def samples(server: Gunicorn, name: str, **labels: str) -> list[Sample]:
    """The OpenMetrics samples called `name` whose labels include `labels`."""
    return [
        sample
        for family in parse_om(openmetrics(server))
        for sample in family.samples
        if sample.name == name and sample.labels.items() >= labels.items()
    ]


def exemplar_of(server: Gunicorn, name: str, **labels: str) -> str | None:
    """The trace id of the one exemplar among those samples (None: there is none)."""
    found = [s.exemplar.labels["trace_id"] for s in samples(server, name, **labels) if s.exemplar]
    assert len(found) <= 1, found
    return found[0] if found else None


def on_every_worker(server: Gunicorn, folder: Path) -> dict[str, tuple[int, str]]:
    """Call g0.py, g1.py, g2.py at once, held until each is on its own worker:
    script -> (pid, trace id)."""
    folder.mkdir()

    def call(n: int) -> tuple[str, tuple[int, str]]:
        params = {"dir": str(folder), "n": str(WORKERS)}
        response = server.get(f"/api/g{n}.py", headers=API, params=params)
        assert response.json()["gathered"], response.text
        return f"g{n}.py", (response.json()["pid"], response.headers["X-Trace-Id"])

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return dict(pool.map(call, range(WORKERS)))


def test_a_scrape_shows_the_exemplars_of_every_worker(server: Gunicorn, tmp_path: Path) -> None:
    calls = on_every_worker(server, tmp_path / "gather")
    assert len({pid for pid, _ in calls.values()}) == WORKERS
    for _ in range(WORKERS):  # fresh connections: whichever worker answers, the same
        for script, (_, trace_id) in calls.items():
            total = {"zone": "api", "script": script, "status": "200"}
            assert exemplar_of(server, "scriptgate_requests_total", **total) == trace_id
            duration = {"zone": "api", "script": script}
            assert exemplar_of(
                server, "scriptgate_request_duration_seconds_bucket", **duration
            ) == (trace_id)


def test_the_most_recent_call_of_a_series_wins_across_workers(
    server: Gunicorn, tmp_path: Path
) -> None:
    first = server.get("/api/pid.py", headers=API)
    deadline = time.monotonic() + 20
    for _ in range(100):  # until another worker serves it (round robin is not promised)
        latest = server.get("/api/pid.py", headers=API)
        if latest.json()["pid"] != first.json()["pid"] or time.monotonic() > deadline:
            break
    assert latest.json()["pid"] != first.json()["pid"], "one worker served every call"
    labels = {"zone": "api", "script": "pid.py", "status": "200"}
    assert (
        exemplar_of(server, "scriptgate_requests_total", **labels) == (latest.headers["X-Trace-Id"])
    )


def test_a_slow_calls_trace_id_marks_the_bucket_of_its_duration(server: Gunicorn) -> None:
    before = time.time()
    response = server.get("/api/slow.py", headers=API)
    trace_id = response.headers["X-Trace-Id"]
    marked = [
        s
        for s in samples(server, "scriptgate_request_duration_seconds_bucket", script="slow.py")
        if s.exemplar
    ]
    assert [s.exemplar.labels for s in marked] == [{"trace_id": trace_id}]
    exemplar, le = marked[0].exemplar, marked[0].labels["le"]
    assert 0.3 <= exemplar.value <= float(le), (exemplar.value, le)
    assert before <= float(exemplar.timestamp) <= time.time()


def test_a_failing_calls_trace_id_is_the_exemplar_of_its_error_counter(server: Gunicorn) -> None:
    trace_id = server.get("/api/boom.py", headers=API).headers["X-Trace-Id"]
    errors = {"zone": "api", "script": "boom.py", "kind": "exception"}
    assert exemplar_of(server, "scriptgate_script_errors_total", **errors) == trace_id


def test_a_jobs_trace_id_marks_its_wait_and_run_buckets(server: Gunicorn) -> None:
    started = server.get("/api/pid.py", headers={**API, "Prefer": "respond-async"})
    assert started.status_code == 202
    location = started.headers["Location"]
    wait_until(
        lambda: server.get(location, headers=API).json()["state"] == "succeeded",
        timeout=30,
        what="the job to succeed",
    )
    trace_id = started.headers["X-Trace-Id"]
    for name in ("scriptgate_job_queued_seconds_bucket", "scriptgate_job_run_seconds_bucket"):
        assert exemplar_of(server, name, script="pid.py") == trace_id, name


def test_exemplar_keys_are_the_keys_of_the_workers_values(server: Gunicorn) -> None:
    """The exemplar files name series as prometheus_client's files do: if a release
    changed its keys, exemplars would silently vanish; this fails instead."""
    server.get("/api/slow.py", headers=API)
    directory = Path(server.env["PROMETHEUS_MULTIPROC_DIR"])
    with multiproc.reading(directory):
        values = {key for path in directory.glob("*.db") for key, *_ in read_values(str(path))}
        exemplar_keys = set(Reader(directory).latest())
    assert exemplar_keys
    assert exemplar_keys <= values, sorted(exemplar_keys - values)[:3]


def test_the_fast_openmetrics_renderer_writes_what_prometheus_client_writes(
    server: Gunicorn,
) -> None:
    for path in ("/api/slow.py", "/api/boom.py", "/api/pid.py"):
        server.get(path, headers=API)
    directory = Path(server.env["PROMETHEUS_MULTIPROC_DIR"])
    collector = FastMultiProcessCollector(str(directory))
    with multiproc.reading(directory):  # as a scrape does: no compaction meanwhile
        found = Reader(directory).latest()
        rendered = collector.render_openmetrics(found)
        expected = openmetrics_latest(_Families(collector, found))
    assert rendered is not None
    assert expected.endswith(b"# EOF\n")
    assert sorted((rendered + b"# EOF\n").splitlines()) == sorted(expected.splitlines())
    assert rendered.count(b' # {trace_id="') >= 3


class _Families:
    """The collector's families with exemplars, for prometheus_client's own encoder."""

    def __init__(self, collector: FastMultiProcessCollector, found: dict) -> None:
        self.collector, self.found = collector, found

    def collect(self) -> Iterator:
        return self.collector.collect_with_exemplars(self.found)


def test_the_text_format_has_no_exemplars(server: Gunicorn) -> None:
    server.get("/api/slow.py", headers=API)
    text = server.get("/_platform/metrics").text
    assert "scriptgate_request_duration_seconds_bucket{" in text
    assert " # {" not in text and "trace_id" not in text


def with_timestamps(exposition: str, millis: int) -> str:
    """Each sample line with a timestamp after its value, exemplars kept: what
    `promtool tsdb create-blocks-from openmetrics` needs to read a scrape."""
    lines = []
    for line in exposition.splitlines():
        match = _SAMPLE_LINE.match(line)
        if line.startswith("#") or match is None:
            lines.append(line)
        else:
            lines.append(f"{match[1]} {match[2]} {millis / 1000}{match[3] or ''}")
    return "\n".join(lines) + "\n"


def promtool_reads_openmetrics(exposition: str, tmp: Path) -> subprocess.CompletedProcess:
    """Prometheus's own OpenMetrics parser (the one a scrape uses) over the exposition,
    exemplars included. `promtool check metrics` cannot: it reads the text format only,
    where ` # {...}` after a value is an error."""
    source = tmp / "scrape.om"
    source.write_text(with_timestamps(exposition, int(time.time() * 1000)))
    return subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tmp / "blocks")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_promtool_reads_the_openmetrics_exposition_and_its_exemplars(
    server: Gunicorn, tmp_path: Path
) -> None:
    server.get("/api/slow.py", headers=API)
    server.get("/api/boom.py", headers=API)
    exposition = openmetrics(server)
    assert exposition.count(' # {trace_id="') >= 3
    result = promtool_reads_openmetrics(exposition, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_exemplar(server: Gunicorn, tmp_path: Path) -> None:
    """Shows the check above can fail: one exemplar's label name made invalid."""
    server.get("/api/slow.py", headers=API)
    broken = openmetrics(server).replace(' # {trace_id="', ' # {trace-id="', 1)
    assert promtool_reads_openmetrics(broken, tmp_path).returncode != 0
