"""/_platform endpoints as a user reads them."""

from __future__ import annotations

from tests.unit.conftest import API, write_scripts


def test_health(client):
    client.get("/hello.py")
    client.get("/api/hello.py", headers=API)
    body = client.get("/_platform/health").get_json()
    assert body["status"] == "ok"
    assert body["requests_total"] == 2
    assert body["errors_total"] == 0
    assert body["scripts"] == 4
    assert body["version"] == "0.1.0"
    assert body["uptime_sec"] >= 0


def test_health_totals_agree_with_metrics_json(make_app, scripts_dir):
    write_scripts(scripts_dir, {"bad.py": "def main(request):\n    raise ValueError\n"})
    client = make_app().test_client()
    for path in ("/hello.py", "/bad.py", "/missing.py", "/api/hello.py"):
        client.get(path)
    health = client.get("/_platform/health").get_json()
    metrics = client.get("/_platform/metrics?format=json").get_json()
    assert health["requests_total"] == metrics["requests_total"] == 4
    assert health["errors_total"] == metrics["errors_total"] == 1
    assert metrics["requests_by_area"] == {"root": 3, "api": 1, "admin": 0}
    assert set(metrics) == {"uptime_sec", "requests_total", "requests_by_area", "errors_total"}


def test_routes_lists_public_scripts_sorted(client):
    assert client.get("/_platform/routes").get_json() == {
        "root": ["hello.py"],
        "api": ["hello.py", "reports/daily.py"],
        "admin": ["stats.py"],
    }


def test_routes_detail(client):
    api = client.get("/_platform/routes?detail=1").get_json()["api"]
    assert api[0] == {
        "path": "hello.py",
        "url": "/api/hello.py",
        "methods": ["GET", "HEAD"],
        "summary": "Say hello. Second line is not the summary.",
        "state": "ok",
        "timeout": 2.0,
    }
    assert api[1]["methods"] == ["GET", "HEAD", "POST"]


def test_platform_endpoints_are_never_shadowed(make_app, scripts_dir):
    write_scripts(scripts_dir, {"_platform/health.py": "def main(request):\n    return 'shadow'\n"})
    response = make_app().test_client().get("/_platform/health")
    assert response.get_json()["status"] == "ok"


def test_platform_wrong_method_is_405(client):
    response = client.post("/_platform/health")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method not allowed"


def test_metrics_text_and_openmetrics(client):
    client.get("/hello.py")
    text = client.get("/_platform/metrics")
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'scriptgate_build_info{version="0.1.0"} 1.0' in text.get_data(as_text=True)
    om = client.get("/_platform/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.get_data(as_text=True).rstrip().endswith("# EOF")


def test_platform_requests_are_labelled_platform(client):
    client.get("/_platform/routes")
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    assert (
        'scriptgate_requests_total{method="GET",script="routes",status="200",zone="platform"} 1.0'
        in metrics
    )


def test_unmatched_paths_share_one_series(client):
    for i in range(20):
        client.get(f"/api/random-{i}.py", headers=API)
        client.get(f"/random-{i}")
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    assert "random-" not in metrics
    assert 'script="__unmatched__",status="404",zone="api"} 20.0' in metrics


def test_made_up_methods_do_not_add_series(client):
    client.open("/hello.py", method="BREW")
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    assert "BREW" not in metrics
    assert 'method="other"' in metrics


def test_error_series_exist_at_zero_once_a_script_loaded(client):
    client.get("/hello.py")
    metrics = client.get("/_platform/metrics").get_data(as_text=True)
    for kind in ("exception", "import", "timeout"):
        assert (
            f'scriptgate_script_errors_total{{kind="{kind}",script="hello.py",zone="root"}} 0.0'
            in metrics
        )


def test_log_time_is_iso8601_utc(client, log_file):
    import re

    from tests.unit.conftest import log_records

    client.get("/hello.py")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", log_records(log_file)[-1]["time"])


def test_routes_list_what_would_be_served_through_symlinks(make_app, scripts_dir, tmp_path):
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text("def main(request):\n    return 'x'\n")
    os.symlink(outside / "leak.py", scripts_dir / "api" / "leak.py")
    os.symlink(outside, scripts_dir / "api" / "elsewhere")
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "api" / "alias.py")
    os.symlink(scripts_dir / "api" / "reports", scripts_dir / "api" / "more")
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "sneaky.py")  # root -> api
    routes = make_app().test_client().get("/_platform/routes").get_json()
    assert routes["api"] == ["alias.py", "hello.py", "more/daily.py", "reports/daily.py"]
    assert routes["root"] == ["hello.py"]
