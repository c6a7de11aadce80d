"""Real Prometheus and Alertmanager for every test that needs them, configured from the
shipped files.

The generated prometheus.yml is the shipped one with only the scrape targets, the
Alertmanager address, the rule file paths and the intervals (1 s instead of 15 s)
replaced; the rule files are used as shipped, and so are the feature flags that
docker-compose.yml gives Prometheus. Targets come from a file (file service discovery),
so a test may start Prometheus before the server it will scrape and point it there later.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.servers import REPO, free_port, stop_process, wait_until

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
PROM_DIR = REPO / "observability" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
COMPOSE_FILE = REPO / "docker-compose.yml"
ALERTMANAGER_CONFIG = REPO / "observability" / "alertmanager" / "alertmanager.yml"
FAST = "1s"


@dataclass(frozen=True)
class Prometheus:
    url: str
    targets: Path  # the file service discovery reads

    def scrape_port(self, port: int) -> None:
        """Point the job at 127.0.0.1:`port` (picked up within Prometheus's 5 s tick)."""
        self.scrape_targets([f"127.0.0.1:{port}"])

    def scrape(self, server: Any) -> None:
        """Point the job at a server's main port (tests.servers.Gunicorn)."""
        self.scrape_port(server.port)

    def scrape_targets(self, targets: list[str]) -> None:
        staged = self.targets.with_suffix(".tmp")
        staged.write_text(json.dumps([{"targets": targets}]))
        staged.replace(self.targets)  # atomic, so Prometheus never reads half a file

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or a scalar wrapped in a list)."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}\n{body}")
        data = body["data"]
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def value(self, expr: str) -> float:
        """The first sample's value of an instant query; 0 when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def series(self, match: str) -> list[dict[str, str]]:
        response = requests.get(f"{self.url}/api/v1/series", params={"match[]": match}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"series query failed: {match}\n{body}")
        return body["data"]

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """/api/v1/query_exemplars: what Grafana asks for a panel's dots, per series."""
        params = {"query": expr, "start": start, "end": end}
        response = requests.get(f"{self.url}/api/v1/query_exemplars", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"exemplar query failed: {expr}\n{body}")
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]


def generated_config(
    targets_file: Path, rule_files: list[Path], alertmanager: str | None
) -> dict[str, Any]:
    """The shipped prometheus.yml with targets, rules, Alertmanager and intervals replaced."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"].update(scrape_interval=FAST, evaluation_interval=FAST, scrape_timeout=FAST)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "scriptgate"]
    assert len(jobs) == 1, "prometheus.yml needs exactly one job named scriptgate"
    jobs[0]["file_sd_configs"] = [{"files": [str(targets_file)]}]
    jobs[0].pop("static_configs", None)
    jobs[0].pop("dns_sd_configs", None)  # compose service names do not resolve here
    config["rule_files"] = [str(path) for path in rule_files]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    return config


def shipped_features() -> list[str]:
    """The `--enable-feature=` flags the compose file gives Prometheus (exemplar storage)."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["prometheus"]["command"]
    return [arg for arg in command if arg.startswith("--enable-feature=")]


def shipped_rule_files() -> list[Path]:
    """The rule files prometheus.yml names, resolved next to it."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    files: list[Path] = []
    for pattern in config["rule_files"]:
        matches = sorted(PROM_DIR.glob(pattern))
        assert matches, f"rule_files entry {pattern!r} matches no file"
        files.extend(matches)
    return files


@contextlib.contextmanager
def _daemon(argv: list[str], tmp: Path, name: str, ready_url: str) -> Iterator[None]:
    output = tmp / f"{name}.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        wait_until(
            lambda: proc.poll() is not None or requests.get(ready_url, timeout=2).ok,
            timeout=30,
            what=f"{name} to be ready",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{output.read_text()[-3000:]}")
        yield
    finally:
        stop_process(proc)


@contextlib.contextmanager
def prometheus(
    tmp: Path, targets: list[str] | None = None, alertmanager: str | None = None
) -> Iterator[Prometheus]:
    """Prometheus on a free 127.0.0.1 port scraping `targets` every second (or none until
    `scrape_port`); always stopped."""
    port = free_port()
    targets_file = tmp / "prometheus-targets.json"
    targets_file.write_text(json.dumps([{"targets": targets}] if targets else []))
    config_file = tmp / "prometheus.yml"
    config_file.write_text(
        yaml.safe_dump(generated_config(targets_file, shipped_rule_files(), alertmanager))
    )
    argv = [
        str(PROMETHEUS),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *shipped_features(),
    ]
    url = f"http://127.0.0.1:{port}"
    with _daemon(argv, tmp, "prometheus", f"{url}/-/ready"):
        yield Prometheus(url, targets_file)


@contextlib.contextmanager
def alertmanager(tmp: Path) -> Iterator[str]:
    """Alertmanager with the shipped config; yields its host:port. No cluster port."""
    port = free_port()
    argv = [
        str(ALERTMANAGER),
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--storage.path={tmp / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with _daemon(argv, tmp, "alertmanager", f"http://127.0.0.1:{port}/-/ready"):
        yield f"127.0.0.1:{port}"
