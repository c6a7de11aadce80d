"""Real Prometheus, with the shipped config and rules, scraping real gunicorn under traffic.

Every PromQL expression of every dashboard panel, dashboard variable and rule is run
through Prometheus's HTTP API and must return data. A failing script must bring the 5xx
alert to pending, and a firing alert must reach a real Alertmanager.

Traffic runs in two rounds. A counter series is born at its first increment, and
rate()/increase() cannot see the step from "no series" to 1; so the first round
creates every series, Prometheus scrapes it, and the second round makes the increases
the alerts look for.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.servers import Gunicorn, free_port, gunicorn, wait_until
from tests.stack import prom, queries
from tests.stack.conftest import make_scripts

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
    prometheus: prom.Prometheus
    dead_target: str
    alertmanager: str | None


def _calls(server: Gunicorn, round_two: bool) -> list[Callable[[], requests.Response]]:
    """One round of traffic: every outcome once, and in round two the alert-sized load."""
    key = {"X-API-Key": API_KEY}
    scoped = {"X-API-Key": SCOPED_KEY}

    def get(path: str, **kw: object) -> Callable[[], requests.Response]:
        return lambda: server.get(path, **kw)

    calls = [
        get("/hello.py?name=stack"),
        get("/api/hello.py", headers=key),
        get("/api/hello.py"),  # 401 api_key
        get("/admin/stats.py"),  # 403 zone_disabled (no ADMIN_API_KEY)
        get("/nope.py"),  # 404, script="__unmatched__"
        get("/boom.py"),  # 500 exception
        get("/sleep.py"),  # 504 timeout
        get("/slow.py"),  # 2.6 s
        get("/api/hello.py", headers=scoped),  # 403 scope, caller="stack-scoped"
    ]
    if round_two:
        calls += [get("/boom.py")] * 30 + [get("/sleep.py")] * 3 + [get("/hello.py")] * 10
        calls += [get("/api/hello.py")] * DENIALS
        calls += [get("/api/hello.py", headers=scoped)] * REFUSALS
    return calls


def _run(calls: list[Callable[[], requests.Response]]) -> list[int]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [response.status_code for response in pool.map(lambda call: call(), calls)]


def _value(prometheus: prom.Prometheus, expr: str) -> float:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


def _scraped(
    prometheus: prom.Prometheus, slow: int, denials: int, errors: int, refusals: int = 0
) -> bool:
    """Has Prometheus stored at least this much of the traffic sent so far?"""
    return (
        _value(prometheus, 'sum(scriptgate_request_duration_seconds_count{script="slow.py"})')
        >= slow
        and _value(prometheus, 'sum(scriptgate_auth_denied_total{reason="api_key"})') >= denials
        and len(prometheus.query("scriptgate_script_errors_total")) >= errors
        and _value(prometheus, "sum(scriptgate_caller_refusals_total)") >= refusals
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus-live")
    scripts = make_scripts(tmp / "scripts")
    keys = tmp / "keys.toml"
    digest = hashlib.sha256(SCOPED_KEY.encode()).hexdigest()
    keys.write_text(
        f'[keys.stack-scoped]\nowner = "stack"\nhash = "sha256:{digest}"\n'
        'scopes = ["api:reports/*"]\n'
    )
    env = {"API_KEY": API_KEY, "SCRIPT_TIMEOUT": "0.5", "KEYS_FILE": str(keys)}
    with contextlib.ExitStack() as stack_:
        server = stack_.enter_context(gunicorn(scripts, tmp, workers=6, env=env))
        am = None
        if prom.ALERTMANAGER.exists():
            am = stack_.enter_context(prom.alertmanager(tmp))
        dead = f"127.0.0.1:{free_port()}"  # nothing listens: ScriptgateInstanceDown
        prometheus = stack_.enter_context(
            prom.prometheus(tmp, [f"127.0.0.1:{server.port}", dead], alertmanager=am)
        )
        statuses = _run(_calls(server, round_two=False))
        assert statuses == [200, 200, 401, 403, 404, 500, 504, 200, 403], statuses
        wait_until(
            lambda: _scraped(prometheus, slow=1, denials=1, errors=2, refusals=1),
            timeout=15,
            what="Prometheus to scrape the first round",
        )
        _run(_calls(server, round_two=True))
        wait_until(
            lambda: _scraped(prometheus, slow=2, denials=DENIALS + 2, errors=2, refusals=REFUSALS),
            timeout=15,
            what="Prometheus to scrape the second round",
        )
        yield Stack(server, prometheus, dead, am)


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


def test_unreachable_replica_makes_instance_down_pending(stack: Stack) -> None:
    wait_until(
        lambda: _alert(stack, "ScriptgateInstanceDown", "pending", instance=stack.dead_target),
        timeout=20,
        what="ScriptgateInstanceDown pending for the dead target",
    )
    live = f"127.0.0.1:{stack.server.port}"
    assert _alert(stack, "ScriptgateInstanceDown", "pending", instance=live) is None


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
    ],
)
def test_metrics_seen_by_prometheus_match_the_traffic(stack: Stack, expr: str, sent: int) -> None:
    """The scrape sums all workers: Prometheus counts every request sent, no more."""
    # The last scrape may have begun while the last calls were still in flight.
    wait_until(lambda: _value(stack.prometheus, expr) >= sent, timeout=10, what=expr)
    assert _value(stack.prometheus, expr) == sent
