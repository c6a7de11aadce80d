"""The compose stack's wiring for keys, TLS, the platform plane and Redis, checked across
files (the running parts are exercised by test_apache_tls.py and the gunicorn tests)."""

from __future__ import annotations

import re

import yaml

from bench import apache
from service.access.keys_file import read_keys_file
from tests.servers import REPO
from tests.stack.test_static import ENV_EXAMPLE, compose_config

HTTPD = REPO / "observability" / "apache" / "httpd.conf"


def services() -> dict:
    return yaml.safe_load(compose_config("--env-file", str(ENV_EXAMPLE)).stdout)["services"]


def test_only_prometheus_reads_the_platform_plane_without_a_key():
    found = services()
    prometheus_ip = found["prometheus"]["networks"]["scriptgate"]["ipv4_address"]
    for name in ("scriptgate-1", "scriptgate-2"):
        assert found[name]["environment"]["PLATFORM_TRUSTED_IPS"] == prometheus_ip


def test_replicas_share_rate_limits_through_the_stacks_redis():
    found = services()
    for name in ("scriptgate-1", "scriptgate-2"):
        env = found[name]["environment"]
        host = re.match(r"redis://([\w-]+):\d+/\d+$", env["REDIS_URL"]).group(1)
        assert host in found and "redis" in found[host]["image"]
        assert found[name]["depends_on"][host]["condition"] == "service_healthy"
        mounts = {v["target"]: v for v in found[name]["volumes"]}
        assert mounts[env["SECRETS_DIR"]]["read_only"] is True
        assert mounts["/etc/scriptgate/keys"]["read_only"] is True


def test_apache_serves_https_and_redirects_plain_http():
    apache_service = services()["apache"]
    env = apache_service["environment"]
    published = {p["target"]: p["published"] for p in apache_service["ports"]}
    assert env["SCRIPTGATE_PORT"] == "443" and published[443] == env["SCRIPTGATE_TLS_PUBLIC_PORT"]
    assert int(env["SCRIPTGATE_REDIRECT_PORT"]) in published
    mounts = {v["target"]: v["source"] for v in apache_service["volumes"]}
    assert mounts["/usr/local/apache2/conf/redirect.conf"] == str(apache.REDIRECT)
    assert "/usr/local/apache2/conf/tls" in mounts
    httpd = HTTPD.read_text()
    assert re.search(r"^Define SCRIPTGATE_TLS$", httpd, re.M)
    assert re.search(r"^Define SCRIPTGATE_TLS_CERT conf/tls/server\.crt$", httpd, re.M)
    assert "Include conf/redirect.conf" in httpd
    # The container's healthcheck expects the redirect's own status.
    status = re.search(r"\[R=(\d{3}),L\]", apache.REDIRECT.read_text()).group(1)
    assert f"' {status} '" in " ".join(apache_service["healthcheck"]["test"])


def test_shipped_keys_file_example_is_valid():
    example = REPO / "keys" / "keys.toml.example"
    (key,) = read_keys_file(example)
    assert key.id == "reports-bot" and key.rate_limit == "100/minute"
