"""From a dot on a dashboard to the call behind it: exemplars in a real Prometheus.

Real gunicorn with three workers and every call sampled (as when traces are exported),
scraped on its platform plane by /usr/bin/prometheus with the shipped configuration and
the feature flags docker-compose.yml gives it (exemplar storage). The scrape negotiates
OpenMetrics, the only format with exemplars. For every panel query the dashboards mark
`"exemplar": true`, /api/v1/query_exemplars (what Grafana asks to draw the dots) must
return the trace id of the call that query is about: the slow call for latency, the
failing script for errors, the job for the job panels.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import prom
from tests.servers import Gunicorn, free_port, gunicorn, wait_until
from tests.stack import queries
from tests.stack.conftest import make_scripts

pytestmark = pytest.mark.skipif(not prom.PROMETHEUS.exists(), reason="prometheus not installed")


@dataclass(frozen=True)
class Calls:
    """The trace ids the test knows, from each response's X-Trace-Id."""

    slow: str  # slow.py: 2.6 s, in the (2.5, 5] bucket
    failing: str  # boom.py: a 500 and an exception
    job: str  # hello.py as a job (Prefer: respond-async)
    started: float


@dataclass(frozen=True)
class Live:
    server: Gunicorn
    prometheus: prom.Prometheus
    calls: Calls


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("exemplars-live")
    scripts = make_scripts(tmp / "scripts")
    target = f"127.0.0.1:{free_port()}"
    env = {"PLATFORM_BIND": target, "JOB_WORKERS": "1", "OTEL_TRACES_SAMPLER": "always_on"}
    with (
        prom.prometheus(tmp, [target]) as prometheus,
        gunicorn(scripts, tmp, workers=3, env=env) as server,
    ):
        started = time.time()
        for _ in range(5):  # other calls around, so the ones looked for are not alone
            assert server.get("/hello.py").status_code == 200
        job = server.get("/hello.py", headers={"Prefer": "respond-async"})
        assert job.status_code == 202
        failing = server.get("/boom.py")
        assert failing.status_code == 500
        slow = server.get("/slow.py")
        assert slow.status_code == 200
        location = job.headers["Location"]
        wait_until(
            lambda: server.get(location).json()["state"] == "succeeded",
            timeout=30,
            what="the job to succeed",
        )
        calls = Calls(
            slow.headers["X-Trace-Id"],
            failing.headers["X-Trace-Id"],
            job.headers["X-Trace-Id"],
            started,
        )
        yield Live(server, prometheus, calls)


def expected_call(query: queries.Query, calls: Calls) -> tuple[str, str]:
    """(the script the dashboard variables select, the trace id the query must find)."""
    if "scriptgate_job_" in query.expr:
        return "hello.py", calls.job
    if "scriptgate_request_duration_seconds" in query.expr:
        return "slow.py", calls.slow
    if "scriptgate_script_errors_total" in query.expr or 'status=~"5' in query.expr:
        return "boom.py", calls.failing
    raise AssertionError(f"{query.where}: which call should its exemplars show? {query.expr}")


def trace_ids(prometheus: prom.Prometheus, expr: str, since: float) -> set[str]:
    found = prometheus.exemplars(expr, since - 60, time.time() + 60)
    return {e["labels"].get("trace_id", "") for series in found for e in series["exemplars"]}


EXEMPLAR_QUERIES = queries.exemplar_queries()


def test_the_dashboards_mark_latency_and_error_panels_for_exemplars() -> None:
    kinds = {expected_call(q, Calls("slow", "failing", "job", 0))[1] for q in EXEMPLAR_QUERIES}
    assert kinds == {"slow", "failing", "job"}


@pytest.mark.parametrize("query", EXEMPLAR_QUERIES, ids=lambda q: q.where)
def test_prometheus_returns_the_calls_trace_id_for_the_panels_query(
    live: Live, query: queries.Query
) -> None:
    script, trace_id = expected_call(query, live.calls)
    variables = {"instance": ".*", "zone": "root", "script": script, "__rate_interval": "1m"}
    expr = queries.substitute(query.expr, variables)
    found = wait_until(
        lambda: trace_id in trace_ids(live.prometheus, expr, live.calls.started),
        timeout=30,
        what=f"the trace id {trace_id} among the exemplars of {query.where}",
    )
    assert found


def test_exemplars_carry_the_value_and_time_of_their_call(live: Live) -> None:
    """The slow call's exemplar: its duration (>= 2.6 s) at the time it was made."""
    expr = 'scriptgate_request_duration_seconds_bucket{script="slow.py"}'
    wait_until(
        lambda: live.calls.slow in trace_ids(live.prometheus, expr, live.calls.started),
        timeout=30,
        what="the slow call's exemplar",
    )
    found = live.prometheus.exemplars(expr, live.calls.started - 60, time.time() + 60)
    (series,) = [s for s in found if s["exemplars"]]
    assert series["seriesLabels"]["le"] == "5.0"
    (exemplar,) = [e for e in series["exemplars"] if e["labels"]["trace_id"] == live.calls.slow]
    assert 2.6 <= float(exemplar["value"]) <= 5.0
    assert live.calls.started <= exemplar["timestamp"] <= time.time()
