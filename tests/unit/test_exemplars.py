"""Exemplars: the per-process files, their merge, and what one app shows without gunicorn.

The files are written by real forked processes, as gunicorn workers write them; the
multi-worker server and a real Prometheus are in tests/integration/test_exemplars.py and
tests/stack/test_exemplars_live.py.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from service.observability import exemplars, multiproc
from service.observability.exemplars import Reader, Recorder
from tests.unit.conftest import API

TRACE_A = "a" * 32
TRACE_B = "b" * 32
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def in_process(directory: Path, work: Callable[[Recorder], None]) -> int:
    """Run `work` with a Recorder in a forked process, as a worker would; its pid."""
    child = multiprocessing.get_context("fork").Process(target=work, args=(Recorder(directory),))
    child.start()
    child.join(20)
    assert child.exitcode == 0, "the writing process failed or hung"
    return child.pid  # type: ignore[return-value]


def put(key: str, trace_id: str, value: float) -> Callable[[Recorder], None]:
    return lambda recorder: recorder._open().put(key, trace_id, value)


def test_an_exemplar_written_by_one_process_is_read_by_another(tmp_path: Path) -> None:
    before = time.time()
    pid = in_process(tmp_path, put("series", TRACE_A, 0.3))
    found = Reader(tmp_path).latest()
    assert set(found) == {"series"}
    assert found["series"].labels == {"trace_id": TRACE_A}
    assert found["series"].value == 0.3
    assert before <= found["series"].timestamp <= time.time()
    assert exemplars.file_of(tmp_path, pid).exists()


def test_the_most_recent_exemplar_of_a_key_wins_across_processes(tmp_path: Path) -> None:
    in_process(tmp_path, put("series", TRACE_A, 1.0))
    in_process(tmp_path, put("series", TRACE_B, 2.0))
    reader = Reader(tmp_path)
    assert reader.latest()["series"].labels == {"trace_id": TRACE_B}
    in_process(tmp_path, put("series", TRACE_A, 3.0))  # a third process, later still
    assert reader.latest()["series"].value == 3.0


def test_a_later_call_overwrites_its_slot_in_place(tmp_path: Path) -> None:
    def twice(recorder: Recorder) -> None:
        recorder.counter("series", TRACE_A)
        recorder.counter("series", TRACE_B)

    pid = in_process(tmp_path, twice)
    assert Reader(tmp_path).latest()["series"].labels == {"trace_id": TRACE_B}
    assert exemplars.file_of(tmp_path, pid).stat().st_size == exemplars.SIZE


def test_an_observation_marks_the_bucket_it_falls_in(tmp_path: Path) -> None:
    keys = ("le=0.1", "le=0.5", "le=1", "le=+Inf")
    bounds = (0.1, 0.5, 1.0, float("inf"))

    def observe(recorder: Recorder) -> None:
        recorder.observe(keys, bounds, TRACE_A, 0.3)
        recorder.observe(keys, bounds, TRACE_B, 0.5)  # on the bound: that bucket
        recorder.observe(keys, bounds, TRACE_B, 99.0)

    in_process(tmp_path, observe)
    found = Reader(tmp_path).latest()
    assert {key: e.value for key, e in found.items()} == {"le=0.5": 0.5, "le=+Inf": 99.0}


def test_the_file_never_grows_past_its_slots(tmp_path: Path) -> None:
    def fill(recorder: Recorder) -> None:
        for n in range(exemplars.SLOTS + 50):
            recorder.counter(f"series-{n}", TRACE_A)

    pid = in_process(tmp_path, fill)
    found = Reader(tmp_path).latest()
    assert len(found) == exemplars.SLOTS
    assert f"series-{exemplars.SLOTS}" not in found
    assert exemplars.file_of(tmp_path, pid).stat().st_size == exemplars.SIZE


def test_a_record_caught_half_written_is_skipped_not_misread(tmp_path: Path) -> None:
    pid = in_process(tmp_path, put("series", TRACE_A, 0.3))
    path = exemplars.file_of(tmp_path, pid)
    with open(path, "r+b") as f:  # the trace id changed, the checksum not yet
        f.seek(exemplars._RECORDS_AT)
        f.write(TRACE_B.encode())
    assert Reader(tmp_path).latest() == {}


def test_a_process_forked_after_the_first_exemplar_writes_a_file_of_its_own(
    tmp_path: Path,
) -> None:
    recorder = Recorder(tmp_path)
    recorder.counter("parent", TRACE_A)
    child = multiprocessing.get_context("fork").Process(
        target=recorder.counter, args=("child", TRACE_B)
    )
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert exemplars.file_of(tmp_path, child.pid).exists()  # type: ignore[arg-type]
    found = Reader(tmp_path).latest()
    assert {key: e.labels["trace_id"] for key, e in found.items()} == {
        "parent": TRACE_A,
        "child": TRACE_B,
    }


def test_a_dead_workers_exemplars_go_with_its_files(tmp_path: Path) -> None:
    pid = in_process(tmp_path, put("series", TRACE_A, 0.3))
    multiproc.worker_exited(pid, tmp_path)
    assert not exemplars.file_of(tmp_path, pid).exists()
    assert Reader(tmp_path).latest() == {}


def test_a_new_server_starts_without_the_last_ones_exemplars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_process(tmp_path, put("series", TRACE_A, 0.3))
    monkeypatch.delenv(multiproc.ENV, raising=False)  # prepare() exports it: undone after
    metrics_dir = multiproc.MetricsDir.prepare(tmp_path)
    try:
        assert Reader(tmp_path).latest() == {}
    finally:
        os.close(metrics_dir._lock_fd)  # the server's lock, held for its lifetime


@pytest.mark.parametrize("traceparent", ["00-" + "c" * 32 + "-" + "d" * 16 + "-00", "", "junk"])
def test_a_job_without_a_sampled_trace_has_no_exemplar(traceparent: str) -> None:
    from service.jobs.metrics import sampled_trace_id

    assert sampled_trace_id(traceparent) is None
    assert sampled_trace_id("00-" + "c" * 32 + "-" + "d" * 16 + "-01") == "c" * 32


@pytest.fixture
def sampled(make_app, monkeypatch):
    """A client of an app whose server spans are sampled, as when traces are exported."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    return make_app().test_client()


def openmetrics_samples(client) -> dict[str, list]:
    response = client.get("/_platform/metrics", headers=OPENMETRICS)
    assert response.status_code == 200
    return {f.name: f.samples for f in parse_om(response.get_data(as_text=True))}


def test_a_sampled_call_is_the_exemplar_of_its_series(sampled) -> None:
    client = sampled
    response = client.get("/api/hello.py", headers=API)
    trace_id = response.headers["X-Trace-Id"]
    samples = openmetrics_samples(client)
    mine = {"zone": "api", "script": "hello.py"}
    counted = [
        s
        for s in samples["scriptgate_requests"]
        if s.name.endswith("_total") and s.labels == {**mine, "method": "GET", "status": "200"}
    ]
    assert [s.exemplar.labels for s in counted] == [{"trace_id": trace_id}]
    buckets = [
        s
        for s in samples["scriptgate_request_duration_seconds"]
        if s.name.endswith("_bucket") and s.exemplar and s.labels.items() >= mine.items()
    ]
    assert [s.exemplar.labels for s in buckets] == [{"trace_id": trace_id}]
    assert buckets[0].exemplar.value <= float(buckets[0].labels["le"])


def test_a_sampled_failure_is_the_exemplar_of_its_error_counter(sampled, scripts_dir) -> None:
    (scripts_dir / "boom.py").write_text("def main(request):\n    raise RuntimeError('x')\n")
    client = sampled
    trace_id = client.get("/boom.py").headers["X-Trace-Id"]
    errors = openmetrics_samples(client)["scriptgate_script_errors"]
    failed = [s for s in errors if s.name.endswith("_total") and s.labels["kind"] == "exception"]
    assert [s.exemplar.labels for s in failed] == [{"trace_id": trace_id}]


def test_a_call_sampled_out_leaves_no_exemplar(client) -> None:
    client.get("/api/hello.py", headers=API)
    samples = openmetrics_samples(client)
    assert not [s for family in samples.values() for s in family if s.exemplar]


def test_exemplars_can_be_turned_off(make_app, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    client = make_app(metrics_exemplars=False).test_client()
    client.get("/api/hello.py", headers=API)
    samples = openmetrics_samples(client)
    assert not [s for family in samples.values() for s in family if s.exemplar]


def test_the_text_format_stays_without_exemplars(sampled) -> None:
    client = sampled
    client.get("/api/hello.py", headers=API)
    text = client.get("/_platform/metrics").get_data(as_text=True)
    assert "trace_id" not in text
