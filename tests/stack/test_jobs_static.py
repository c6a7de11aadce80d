"""The compose stack's job pieces, checked against each other: the replicas queue in the
Redis the job service takes from, the job service runs a command the CLI accepts, and
Prometheus scrapes it where its platform plane listens."""

from __future__ import annotations

import yaml

from service.cli import build_parser
from tests import prom
from tests.stack.test_static import ENV_EXAMPLE, compose_config

REPLICAS = ("scriptgate-1", "scriptgate-2")


def services() -> dict:
    result = compose_config("--env-file", str(ENV_EXAMPLE))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_replicas_queue_in_the_redis_the_job_service_runs_from() -> None:
    found = services()
    jobs = found["scriptgate-jobs"]
    broker = jobs["environment"]["JOB_BROKER_URL"]
    assert broker.startswith("redis://redis:")
    assert "redis" in found and found["redis"]["healthcheck"]["test"]
    for name in REPLICAS:
        env = found[name]["environment"]
        assert env["JOB_BROKER_URL"] == broker
        assert env["JOB_WORKERS"] == "0"  # the replicas only queue; jobs run apart
        assert found[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert int(jobs["environment"]["JOB_WORKERS"]) >= 1


def test_job_service_runs_scriptgate_jobs_with_its_plane_where_it_is_checked() -> None:
    jobs = services()["scriptgate-jobs"]
    command = jobs["command"]
    args = build_parser().parse_args(command[1:])
    assert command[0] == "scriptgate" and args.command == "jobs"
    port = args.platform_bind.rpartition(":")[2]
    assert f"127.0.0.1:{port}/_platform/health" in " ".join(jobs["healthcheck"]["test"])
    scrape = yaml.safe_load(prom.PROM_CONFIG.read_text())["scrape_configs"][0]
    (dns,) = scrape["dns_sd_configs"]
    assert dns["names"] == ["scriptgate-jobs"] and str(dns["port"]) == port
    env = jobs["environment"]
    logs = next(v for v in jobs["volumes"] if v["source"] == "scriptgate-logs")
    assert env["LOG_FILE"].startswith(logs["target"] + "/") and env["LOG_FILE"].endswith(".log")
