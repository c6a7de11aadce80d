"""A real Prometheus scrapes a real multi-worker server and sees exactly what was sent."""

from __future__ import annotations

from pathlib import Path

from tests.integration.prom import API, API_KEY, write_scripts
from tests.prom import Prometheus, prometheus
from tests.servers import gunicorn, wait_until

# (zone, script, status) -> (URL, headers, calls)
SENT = {
    ("api", "pid.py", "200"): ("/api/pid.py", API, 7),
    ("root", "hello.py", "200"): ("/hello.py", {}, 4),
    ("root", "__unmatched__", "404"): ("/missing.py", {}, 3),
    ("api", "boom.py", "500"): ("/api/boom.py", API, 2),
}
EXPECTED = {key: float(calls) for key, (_, _, calls) in SENT.items()}


def scraped_counts(prom: Prometheus) -> dict[tuple[str, str, str], float]:
    result = prom.query('scriptgate_requests_total{zone!="platform"}')
    return {
        (r["metric"]["zone"], r["metric"]["script"], r["metric"]["status"]): float(r["value"][1])
        for r in result
    }


def values(prom: Prometheus, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in prom.query(expr)]


def test_prometheus_scrapes_the_exact_counts_from_every_worker(tmp_path: Path) -> None:
    scripts = write_scripts(tmp_path / "scripts")
    env = {"API_KEY": API_KEY}
    with prometheus(tmp_path) as prom, gunicorn(scripts, tmp_path, workers=3, env=env) as server:
        for (_, _, status), (path, headers, calls) in SENT.items():
            for _ in range(calls):
                assert server.get(path, headers=headers).status_code == int(status)
        prom.scrape(server)
        wait_until(
            lambda: scraped_counts(prom) == EXPECTED, 20, 0.2, what=f"Prometheus to see {EXPECTED}"
        )
        up = values(prom, 'up{job="scriptgate"}')
        pid_series = prom.query('scriptgate_requests_total{script="pid.py"}')
        errors = values(prom, "sum(scriptgate_script_errors_total)")
        build = values(prom, "scriptgate_build_info")

    assert up == [1.0]
    assert [r["metric"] for r in pid_series] == [
        {
            "__name__": "scriptgate_requests_total",
            "instance": f"127.0.0.1:{server.port}",
            "job": "scriptgate",
            "method": "GET",
            "script": "pid.py",
            "status": "200",
            "zone": "api",
        }
    ]
    assert errors == [2.0]
    assert build == [1.0]
