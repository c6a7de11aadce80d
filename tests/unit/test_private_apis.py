"""The libraries' private parts Scriptgate leans on, each checked here so an upgrade that
moves one fails this file, not production. pyproject.toml pins each library to the minor
versions these tests ran against."""

from __future__ import annotations

import inspect

from flask import Flask
from huey.consumer import Worker
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from service.app import _ScriptgateFlask


def test_huey_worker_takes_what_jobs_worker_passes() -> None:
    """jobs/worker.py runs huey's consumer Worker loop in its own process (huey's
    Consumer would start its own processes and signal handlers)."""
    parameters = inspect.signature(Worker.__init__).parameters
    assert {"huey", "stop_flag", "default_delay", "max_delay", "backoff"} <= set(parameters)
    assert callable(Worker.loop) and not inspect.signature(Worker.loop).parameters.keys() - {
        "self",
        "now",
    }


def test_huey_workers_idle_sleep_is_its_stop_flags_wait(tmp_path) -> None:
    """jobs/doorbell.py wakes an idle worker through the `stop_flag` it passes: huey's
    Worker must sleep between empty SQLite polls with `stop_flag.wait(delay)`."""
    from huey import SqliteHuey

    class Flag:
        waits: list[float] = []

        def wait(self, timeout: float) -> bool:
            self.waits.append(timeout)
            return False

    flag = Flag()
    huey = SqliteHuey("private-api", filename=str(tmp_path / "q.db"))
    Worker(huey=huey, stop_flag=flag, default_delay=0.05, max_delay=0.5, backoff=2).loop()
    assert flag.waits == [0.05]


def test_flask_hooks_the_app_overrides_keep_their_signatures() -> None:
    """app.py replaces routing: dispatch_request() with no argument (Flask 3.2 passes the
    request context) and create_url_adapter(request)."""
    assert list(inspect.signature(Flask.dispatch_request).parameters) == ["self"]
    assert list(inspect.signature(Flask.create_url_adapter).parameters) == ["self", "request"]
    assert _ScriptgateFlask.dispatch_request is not Flask.dispatch_request


def test_prometheus_multiprocess_readers_are_where_observability_reads_them() -> None:
    """multiproc.py and collector.py read worker files with MmapedDict and fall back to
    MultiProcessCollector.merge for the families they do not merge themselves."""
    assert callable(MmapedDict.read_all_values_from_file)
    assert list(inspect.signature(MultiProcessCollector.merge).parameters) == [
        "files",
        "accumulate",
    ]


def test_the_flask_instrumentation_keeps_the_server_spans_activation_in_the_environ() -> None:
    """tracing.end_server_span_later keeps a streamed answer's server span open until the
    stream ends by swapping the activation the instrumentation's teardown exits."""
    from opentelemetry.instrumentation import flask as otel_flask

    assert isinstance(otel_flask._ENVIRON_ACTIVATION_KEY, str)
    source = inspect.getsource(otel_flask._wrapped_teardown_request)
    assert "_ENVIRON_ACTIVATION_KEY" in source and "__exit__" in source
