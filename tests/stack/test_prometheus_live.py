"""Real Prometheus, with the shipped config and rules, scraping real gunicorn under traffic.

As in docker-compose.yml, Prometheus scrapes the server's platform plane (PLATFORM_BIND),
not the port the scripts are served on.

Every PromQL expression of every dashboard panel, dashboard variable and rule is run
through Prometheus's HTTP API and must return data. A failing script must bring the 5xx
alert to pending, and a firing alert must reach a real Alertmanager.

Traffic runs in two rounds. A counter series is born at its first increment, and
rate()/increase() cannot see the step from "no series" to 1; so the first round
creates every series, Prometheus scrapes it, and the second round makes the increases
the alerts look for. Each round also has limited.py (CONCURRENCY = 1) refuse one call
while another holds its slot.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import prom
from tests.servers import Gunicorn, free_port, gunicorn, log_records, wait_until
from tests.stack import queries
from tests.stack.conftest import Gate, make_scripts

API_KEY = "stack-test-key"
SCOPED_KEY = "sg_stack_scoped_0123456789abcdefghijklmnopqrstuvw"  # api:reports/* only
# What the dashboards' template variables are set to: boom.py has traffic, errors and
# latency, so every per-script panel has something to show.
VARIABLES = {
    "instance": ".*",
    "zone": "root",
    "script": "boom.py",
    "caller": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
DENIALS = 250  # > 0.5/s over the 5m window of ScriptgateAuthDenialBurst
REFUSALS = 120  # > 0.2/s over the 5m window of ScriptgateCallerRefusalBurst

pytestmark = pytest.mark.skipif(not prom.PROMETHEUS.exists(), reason="prometheus not installed")


@dataclass(frozen=True)
class Stack:
    server: Gunicorn
    target: str  # the platform plane Prometheus scrapes
    prometheus: prom.Prometheus
    dead_target: str
    alertmanager: str | None


def _calls(server: Gunicorn, round_two: bool) -> list[Callable[[], requests.Response]]:
    """One round of traffic: every outcome once, and in round two the alert-sized load."""
    key = {"X-API-Key": API_KEY}
    scoped = {"X-API-Key": SCOPED_KEY}

    def get(path: str, **kw: object) -> Callable[[], requests.Response]:
        return lambda: server.get(path, **kw)

    job = {"Prefer": "respond-async"}

    calls = [
        get("/hello.py?name=stack"),
        get("/api/hello.py", headers=key),
        get("/api/hello.py"),  # 401 api_key
        get("/admin/stats.py"),  # 403 zone_disabled (no ADMIN_API_KEY)
        get("/nope.py"),  # 404, script="__unmatched__"
        get("/boom.py"),  # 500 exception
        get("/sleep.py"),  # 504 timeout
        get("/slow.py"),  # 2.6 s
        get("/hello.py", headers=job),  # 202: a job that succeeds
        get("/boom.py", headers=job),  # 202: a job that fails
        get("/api/hello.py", headers=scoped),  # 403 scope, caller="stack-scoped"
        get("/crash.py"),  # 500 runner_died, kind="crashed"
        get("/hangs.py"),  # 504 at its import, then backed off (503)
    ]
    if round_two:
        calls += [get("/boom.py")] * 30 + [get("/sleep.py")] * 3 + [get("/hello.py")] * 10
        calls += [get("/api/hello.py")] * DENIALS
        calls += [get("/api/hello.py", headers=scoped)] * REFUSALS
    return calls


def _run(calls: list[Callable[[], requests.Response]]) -> list[int]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [response.status_code for response in pool.map(lambda call: call(), calls)]


def _refuse_one(server: Gunicorn, gate: Gate) -> list[int]:
    """limited.py called while its one slot is held: [the holder's status, the other's]."""
    with gate.holding(lambda: server.get("/limited.py"), 1) as held:
        refused = server.get("/limited.py")
    return [held[0].result().status_code, refused.status_code]


def _scraped(
    prometheus: prom.Prometheus,
    slow: int,
    denials: int,
    errors: int,
    refused: int,
    failed_jobs: int,
    refusals: int = 0,
) -> bool:
    """Has Prometheus stored at least this much of the traffic sent so far?"""
    failed = 'sum(scriptgate_jobs_total{script="boom.py", state="failed"})'
    return (
        prometheus.value(failed) >= failed_jobs
        and prometheus.value('sum(scriptgate_request_duration_seconds_count{script="slow.py"})')
        >= slow
        and prometheus.value('sum(scriptgate_auth_denied_total{reason="api_key"})') >= denials
        and len(prometheus.query("scriptgate_script_errors_total")) >= errors
        and prometheus.value("sum(scriptgate_requests_rejected_total)") >= refused
        and prometheus.value("sum(scriptgate_caller_refusals_total)") >= refusals
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus-live")
    scripts = make_scripts(tmp / "scripts")
    # Only here (SCRIPT_TIMEOUT 0.5): a runner that dies, and (below) an import that never ends.
    (scripts / "crash.py").write_text("import os\ndef main(request):\n    os._exit(1)\n")
    clock = _scheduled_scripts(tmp, scripts)
    target = f"127.0.0.1:{free_port()}"
    gate = Gate(tmp / "gate")
    keys = tmp / "keys.toml"
    digest = hashlib.sha256(SCOPED_KEY.encode()).hexdigest()
    keys.write_text(
        f'[keys.stack-scoped]\nowner = "stack"\nhash = "sha256:{digest}"\n'
        'scopes = ["api:reports/*"]\n'
    )
    env = {
        "API_KEY": API_KEY,
        "SCRIPT_TIMEOUT": "0.5",
        "PLATFORM_BIND": target,
        "JOB_WORKERS": "1",
        "KEYS_FILE": str(keys),
        "SCHEDULE_TEST_CLOCK": str(clock),
        **gate.env,
    }
    with contextlib.ExitStack() as stack_:
        server = stack_.enter_context(gunicorn(scripts, tmp, workers=6, env=env))
        am = None
        if prom.ALERTMANAGER.exists():
            am = stack_.enter_context(prom.alertmanager(tmp))
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: ScriptgateInstanceDown
        prometheus = stack_.enter_context(prom.prometheus(tmp, [target, dead], alertmanager=am))
        _queue_a_stale_job(tmp, scripts)
        _run_schedules(server, clock)
        # Written just before its call, so the health scanner has not backed it off yet.
        (scripts / "hangs.py").write_text("while True:\n    pass\ndef main(request):\n    pass\n")
        statuses = _run(_calls(server, round_two=False))
        assert statuses == [200, 200, 401, 403, 404, 500, 504, 200, 202, 202, 403, 500, 504], (
            statuses
        )
        assert _refuse_one(server, gate) == [200, 429]
        wait_until(
            lambda: _scraped(
                prometheus, slow=1, denials=1, errors=2, refused=1, failed_jobs=1, refusals=1
            ),
            timeout=15,
            what="Prometheus to scrape the first round",
        )
        _run(_calls(server, round_two=True))
        assert _refuse_one(server, gate) == [200, 429]
        wait_until(
            lambda: _scraped(
                prometheus,
                slow=2,
                denials=DENIALS + 2,
                errors=2,
                refused=2,
                failed_jobs=2,
                refusals=REFUSALS,
            ),
            timeout=15,
            what="Prometheus to scrape the second round",
        )
        yield Stack(server, target, prometheus, dead, am)


def _scheduled_scripts(tmp: Path, scripts: Path) -> Path:
    """Two scripts run every minute, one that fails, on a test clock an hour behind:
    what the schedule panels and alerts look for (a success, failures in a row, a
    schedule that looks late) without waiting real minutes. Returns the clock file."""
    (scripts / "sched_ok.py").write_text(
        'SCHEDULE = "* * * * *"\ndef main(request):\n    return "ok"\n'
    )
    (scripts / "sched_fail.py").write_text(
        'SCHEDULE = "* * * * *"\ndef main(request):\n    raise RuntimeError("scheduled")\n'
    )
    clock = tmp / "schedule-clock.txt"
    clock.write_text(repr(time.time() // 60 * 60 - 3600 - 30))  # 30 s before a minute
    return clock


def _run_schedules(server: Gunicorn, clock: Path) -> None:
    """Three scheduled minutes, each run to its end before the next (else it is skipped)."""
    start = float(clock.read_text()) + 30

    def failures() -> int:
        listing = server.get("/_platform/schedules").json()["schedules"]
        return next(e["consecutive_failures"] for e in listing if e["script"] == "/sched_fail.py")

    wait_until(
        lambda: sum(r.get("message") == "schedule found" for r in log_records(server)) >= 2,
        timeout=30,
        what="the scheduler to find both schedules",
    )
    for minute in range(3):
        clock.write_text(repr(start + minute * 60))
        wait_until(lambda m=minute: failures() > m, timeout=30, what=f"scheduled run {minute + 1}")


def _queue_a_stale_job(tmp: Path, scripts: Path) -> None:
    """A job queued an hour ago that no worker will take (it was never handed to the
    queue): what the queue-age alert looks for, without waiting an hour for it."""
    from service.config import Settings
    from service.jobs.queue import JobQueue
    from tests.integration.test_jobs_store import make_job

    queue = JobQueue(Settings(scripts_dir=scripts, job_data_dir=tmp / "data"))
    queue.store.create(make_job("stale-job-" + "0" * 22, time.time() - 3600), b"{}", time.time())
    queue.close()


def _all_queries() -> list[queries.Query]:
    found = []
    for name, dashboard in queries.dashboards().items():
        found += queries.panel_queries(name, dashboard) + queries.variable_queries(name, dashboard)
    return [q for q in found if q.datasource == "prometheus"] + queries.rule_queries()


def _returns_data(prometheus: prom.Prometheus, query: queries.Query) -> bool:
    expr = queries.substitute(query.expr, VARIABLES)
    if expr.lstrip().startswith("label_values("):
        selector, label = queries.label_values_selector(expr)
        return any(label in series for series in prometheus.series(selector))
    return bool(prometheus.query(expr))


def test_every_dashboard_and_rule_query_returns_data(stack: Stack) -> None:
    all_queries = _all_queries()
    pending = list(all_queries)
    # Recording rules, and the alerts built on them, need an evaluation after the last
    # scrape: retry the empty ones for a few seconds.
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        pending = [q for q in pending if not _returns_data(stack.prometheus, q)]
        if pending:
            time.sleep(0.5)
    answered = len(all_queries) - len(pending)
    print(f"\n{answered} of {len(all_queries)} queries returned data")
    assert not pending, "queries without data:\n" + "\n".join(
        f"  {q.where}: {q.expr}" for q in pending
    )


def _alert(stack: Stack, name: str, state: str, **labels: str) -> dict | None:
    for alert in stack.prometheus.alerts():
        if alert["labels"].get("alertname") != name or alert["state"] != state:
            continue
        if all(alert["labels"].get(k) == v for k, v in labels.items()):
            return alert
    return None


def test_failing_script_makes_the_5xx_alert_pending(stack: Stack) -> None:
    alert = wait_until(
        lambda: _alert(stack, "ScriptgateHighErrorRatio", "pending", zone="root"),
        timeout=20,
        what="ScriptgateHighErrorRatio pending for zone root",
    )
    assert float(alert["value"]) > 0.05
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#scriptgatehigherrorratio"
    # The healthy api zone (only 200s and 401s) does not alert.
    assert _alert(stack, "ScriptgateHighErrorRatio", "pending", zone="api") is None


def test_refused_calls_make_the_concurrency_alert_pending(stack: Stack) -> None:
    alert = wait_until(
        lambda: _alert(stack, "ScriptgateConcurrencyLimitFull", "pending", script="limited.py"),
        timeout=20,
        what="ScriptgateConcurrencyLimitFull pending for limited.py",
    )
    assert alert["labels"]["zone"] == "root"
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#scriptgateconcurrencylimitfull"
    # Only the script that refused calls: the others have no limit, or room under it.
    alerts = stack.prometheus.alerts()
    named = [a for a in alerts if a["labels"]["alertname"] == "ScriptgateConcurrencyLimitFull"]
    assert [a["labels"]["script"] for a in named] == ["limited.py"]


def test_unreachable_replica_makes_instance_down_pending(stack: Stack) -> None:
    wait_until(
        lambda: _alert(stack, "ScriptgateInstanceDown", "pending", instance=stack.dead_target),
        timeout=20,
        what="ScriptgateInstanceDown pending for the dead target",
    )
    assert _alert(stack, "ScriptgateInstanceDown", "pending", instance=stack.target) is None


def test_firing_alert_reaches_alertmanager(stack: Stack) -> None:
    if stack.alertmanager is None:
        pytest.skip("prometheus-alertmanager not installed (add it to the Makefile's DEBS)")

    def delivered() -> list[dict]:
        response = requests.get(
            f"http://{stack.alertmanager}/api/v2/alerts",
            params={"filter": 'alertname="ScriptgateScriptExceptions"'},
            timeout=5,
        )
        return [a for a in response.json() if a["labels"].get("script") == "boom.py"]

    alerts = wait_until(delivered, timeout=20, what="ScriptgateScriptExceptions in Alertmanager")
    assert alerts[0]["labels"]["kind"] == "exception"
    assert alerts[0]["labels"]["severity"] == "warning"


@pytest.mark.parametrize(
    ("expr", "sent"),
    [
        # round one, then round two's own call and 30 more
        ('sum(scriptgate_requests_total{script="boom.py", status="500"})', 1 + 31),
        ('sum(scriptgate_script_errors_total{script="sleep.py", kind="timeout"})', 1 + 4),
        ('sum(scriptgate_auth_denied_total{zone="api", reason="api_key"})', 1 + 1 + DENIALS),
        # one refused call per round, all workers summed
        ('sum(scriptgate_requests_rejected_total{script="limited.py", reason="concurrency"})', 2),
    ],
)
def test_metrics_seen_by_prometheus_match_the_traffic(stack: Stack, expr: str, sent: int) -> None:
    """The scrape sums all workers: Prometheus counts every request sent, no more."""
    # The last scrape may have begun while the last calls were still in flight.
    wait_until(lambda: stack.prometheus.value(expr) >= sent, timeout=10, what=expr)
    assert stack.prometheus.value(expr) == sent
