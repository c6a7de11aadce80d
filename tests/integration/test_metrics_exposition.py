"""The contract's metrics, as a real multi-worker gunicorn exposes them after every kind of call.

One server answers each kind of request once (200 in every zone, 404, 401, 500 from an
exception and from an import failure, 504, 405, platform calls); the tests then read its
exposition in the three formats a user can ask for and check it with promtool.
"""

from __future__ import annotations

import random
import re
import string
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.integration.prom import (
    ADMIN,
    ADMIN_KEY,
    API,
    API_KEY,
    call,
    scrape,
    series,
    write_scripts,
)
from tests.prom import PROMTOOL
from tests.servers import Gunicorn, gunicorn

U = "__unmatched__"
WORKERS = 3

# (method, path, headers, expected status, the scriptgate_requests_total labels it adds)
KINDS = [
    ("GET", "/hello.py", {}, 200, ("root", "hello.py")),
    ("GET", "/api/pid.py", API, 200, ("api", "pid.py")),
    ("GET", "/admin/pid.py", ADMIN, 200, ("admin", "pid.py")),
    ("GET", "/nope.py", {}, 404, ("root", U)),
    ("GET", "/api/nope.py", API, 404, ("api", U)),
    ("GET", "/admin/nope.py", ADMIN, 404, ("admin", U)),
    ("GET", "/api/pid.py", {"X-API-Key": "wrong"}, 401, ("api", U)),
    ("GET", "/admin/pid.py", {"X-Admin-Key": "wrong"}, 401, ("admin", U)),
    ("GET", "/api/boom.py", API, 500, ("api", "boom.py")),
    ("GET", "/api/broken.py", API, 500, ("api", "broken.py")),
    ("GET", "/api/loop.py", API, 504, ("api", "loop.py")),
    ("POST", "/api/getonly.py", API, 405, ("api", "getonly.py")),
    ("GET", "/_platform/routes", {}, 200, ("platform", "routes")),
    ("GET", "/_platform/health", {}, 200, ("platform", "health")),
]

# The contract's Metrics table: exposed sample name -> (type, label names).
CONTRACT = {
    "scriptgate_requests_total": ("counter", {"zone", "script", "method", "status"}),
    "scriptgate_request_duration_seconds": ("histogram", {"zone", "script"}),
    "scriptgate_script_errors_total": ("counter", {"zone", "script", "kind"}),
    "scriptgate_auth_denied_total": ("counter", {"zone", "reason"}),
    "scriptgate_requests_in_progress": ("gauge", {"zone"}),
    "scriptgate_build_info": ("gauge", {"version"}),
}


def labels(**kv: str) -> frozenset:
    return frozenset(kv.items())


def nonzero(found: dict[frozenset, float]) -> dict[frozenset, float]:
    """Series that counted something (the platform may create some at 0 up front)."""
    return {k: v for k, v in found.items() if v}


def send(server: Gunicorn, method: str, path: str, headers: dict[str, str]) -> int:
    return server.request(method, path, headers=headers).status_code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    """A 3-worker server that has answered every kind of request once."""
    tmp = tmp_path_factory.mktemp("exposition")
    scripts = write_scripts(tmp / "scripts")
    env = {"API_KEY": API_KEY, "ADMIN_API_KEY": ADMIN_KEY, "SCRIPT_TIMEOUT": "1"}
    with gunicorn(scripts, tmp, workers=WORKERS, env=env) as srv:
        answered = [send(srv, method, path, headers) for method, path, headers, *_ in KINDS]
        assert answered == [kind[3] for kind in KINDS]
        yield srv


@pytest.fixture
def exposition(server: Gunicorn) -> str:
    response = server.get("/_platform/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_metric_is_exposed_with_its_type_and_labels(server: Gunicorn, name: str) -> None:
    kind, label_names = CONTRACT[name]
    families = scrape(server)
    family = families.get(name.removesuffix("_total"))
    assert family is not None, f"{name} missing; exposed: {sorted(families)}"
    assert family.type == kind
    assert family.samples, f"{name} has no samples"
    for sample in family.samples:
        extra = {"le"} if sample.name.endswith("_bucket") else set()
        assert set(sample.labels) == label_names | extra, sample


def test_every_kind_of_request_is_counted_by_zone_script_method_and_status(
    server: Gunicorn,
) -> None:
    counts = series(scrape(server), "scriptgate_requests_total")
    for method, _path, _headers, status, (zone, script) in KINDS:
        key = labels(zone=zone, script=script, method=method, status=str(status))
        assert counts.get(key, 0) >= 1, f"no {dict(key)} in {counts}"
    for key in counts:
        status = dict(key)["status"]
        assert re.fullmatch(r"[1-5]\d\d", status), f"status label {status!r} is not numeric"


def test_script_failures_are_counted_by_kind(server: Gunicorn) -> None:
    errors = series(scrape(server), "scriptgate_script_errors_total")
    assert nonzero(errors) == {
        labels(zone="api", script="boom.py", kind="exception"): 1.0,
        labels(zone="api", script="broken.py", kind="import"): 1.0,
        labels(zone="api", script="loop.py", kind="timeout"): 1.0,
    }
    # Series at 0 (so increase() sees a first failure) exist only for real scripts.
    assert {dict(k)["script"] for k in errors} <= {
        "hello.py",
        "pid.py",
        "boom.py",
        "broken.py",
        "loop.py",
        "getonly.py",
    }


def test_wrong_keys_are_counted_as_auth_denials(server: Gunicorn) -> None:
    denied = series(scrape(server), "scriptgate_auth_denied_total")
    assert nonzero(denied) == {
        labels(zone="api", reason="api_key"): 1.0,
        labels(zone="admin", reason="admin_key"): 1.0,
    }


def test_platform_calls_are_zone_platform_and_never_a_script_zone(server: Gunicorn) -> None:
    server.get("/_platform/metrics")
    counts = series(scrape(server), "scriptgate_requests_total")
    platform = {dict(k)["script"] for k in counts if dict(k)["zone"] == "platform"}
    assert {"health", "routes", "metrics"} <= platform
    for key in counts:
        if dict(key)["script"] in ("health", "routes", "metrics"):
            assert dict(key)["zone"] == "platform", dict(key)


def test_in_progress_counts_only_the_scrape_itself(server: Gunicorn) -> None:
    gauges = series(scrape(server), "scriptgate_requests_in_progress")
    assert gauges[labels(zone="platform")] == 1.0
    assert all(v == 0.0 for k, v in gauges.items() if k != labels(zone="platform")), gauges


def test_timed_out_call_lands_in_a_finite_duration_bucket(server: Gunicorn) -> None:
    samples = scrape(server)["scriptgate_request_duration_seconds"].samples
    loop = [s for s in samples if s.labels.get("script") == "loop.py"]
    finite = [s for s in loop if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"]
    assert max(s.value for s in finite) == 1.0, "the 504 fell only into the +Inf bucket"
    assert [s.value for s in loop if s.name.endswith("_count")] == [1.0]


def test_promtool_accepts_the_exposition(exposition: str) -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scriptgate_requests_total{" in exposition


def test_promtool_rejects_a_broken_exposition(exposition: str) -> None:
    """Shows the check above can fail: the same text with one value mangled is refused."""
    broken = exposition.replace("scriptgate_build_info{", "scriptgate_build_info{version=", 1)
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=broken, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0


def test_openmetrics_is_served_when_accept_asks_for_it(server: Gunicorn) -> None:
    response = server.get(
        "/_platform/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(response.text)}
    assert families["scriptgate_requests"].type == "counter"
    totals = [s for s in families["scriptgate_requests"].samples if s.name.endswith("_total")]
    key = {"zone": "api", "script": "boom.py", "method": "GET", "status": "500"}
    assert [s.value for s in totals if s.labels == key] == [1.0]


def test_json_format_has_the_contract_shape_and_agrees_with_the_exposition(
    server: Gunicorn,
) -> None:
    body = server.get("/_platform/metrics", params={"format": "json"}).json()
    assert set(body) == {"uptime_sec", "requests_total", "requests_by_area", "errors_total"}
    assert body["uptime_sec"] > 0
    families = scrape(server)
    by_area = {"root": 0, "api": 0, "admin": 0}
    for key, value in series(families, "scriptgate_requests_total").items():
        zone = dict(key)["zone"]
        if zone in by_area:
            by_area[zone] += int(value)
    assert body["requests_by_area"] == by_area
    assert body["requests_total"] == sum(by_area.values())
    errors = series(families, "scriptgate_script_errors_total")
    assert body["errors_total"] == int(sum(errors.values())) == 3


def random_misses(count: int, seed: int = 1234) -> list[tuple[str, dict[str, str]]]:
    """Paths no script answers, spread over every zone and shape a scanner would try."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))

    shapes = [
        lambda: (f"/api/{word()}.py", API),
        lambda: (f"/{word()}.py", {}),
        lambda: (f"/x/{word()}", {}),
        lambda: (f"/admin/{word()}/{word()}.py", ADMIN),
        lambda: (f"/api/{word()}/../{word()}.py", API),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def test_one_thousand_random_404_paths_create_no_series(server: Gunicorn) -> None:
    before = series(scrape(server), "scriptgate_requests_total")
    histogram_before = len(scrape(server)["scriptgate_request_duration_seconds"].samples)
    misses = random_misses(1000)

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = [status for status, _ in pool.map(lambda m: call(server, *m), misses)]
    assert set(statuses) == {404}
    families = scrape(server)
    after = series(families, "scriptgate_requests_total")
    print(f"scriptgate_requests_total series: {len(before)} before, {len(after)} after 1000 misses")
    assert set(after) == set(before)
    grown = sum(after[k] - before[k] for k in after if dict(k)["script"] == U)
    assert grown == 1000, "the misses were not all counted"
    assert len(families["scriptgate_request_duration_seconds"].samples) == histogram_before


def test_made_up_methods_count_as_other(server: Gunicorn) -> None:
    rng = random.Random(99)
    for _ in range(20):
        method = "".join(rng.choices(string.ascii_uppercase, k=8))
        assert server.request(method, "/hello.py").status_code in (405, 501)
    methods = {dict(k)["method"] for k in series(scrape(server), "scriptgate_requests_total")}
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def test_ip_and_disabled_zone_denials_are_counted(tmp_path: Path) -> None:
    """A second server: /api closed (no API_KEY) and /admin only for 10.0.0.0/8."""
    scripts = write_scripts(tmp_path / "scripts")
    env = {"ADMIN_API_KEY": ADMIN_KEY, "ADMIN_TRUSTED_IPS": "10.0.0.0/8"}
    with gunicorn(scripts, tmp_path, workers=2, env=env) as srv:
        assert srv.get("/api/pid.py", headers=API).json()["reason"] == "zone_disabled"
        assert srv.get("/admin/pid.py", headers=ADMIN).json()["reason"] == "ip"
        families = scrape(srv)
    assert nonzero(series(families, "scriptgate_auth_denied_total")) == {
        labels(zone="api", reason="zone_disabled"): 1.0,
        labels(zone="admin", reason="ip"): 1.0,
    }
    counts = series(families, "scriptgate_requests_total")
    assert counts[labels(zone="api", script=U, method="GET", status="403")] == 1.0
    assert counts[labels(zone="admin", script=U, method="GET", status="403")] == 1.0
