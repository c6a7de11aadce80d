"""deploy/kubernetes, rendered by `kubectl kustomize` as an operator would, then read.

No cluster here: every overlay is validated against the pinned Kubernetes schemas, and
what a cluster would only show at run time is checked against the code instead: the
probes name real endpoints on real ports (a real `scriptgate serve` and `scriptgate jobs`
answer them, started with the rendered command and settings), SCRIPTS_DIR is git-sync's
link, every variable is a setting Settings.from_env reads, secrets are mounted where the
settings say, and the PrometheusRule is the shipped rule files.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml

from bench.procs import SCRIPTGATE, clean_env, free_port, serving
from service.config import Settings
from service.platform.views import VIEWS
from tests.servers import BIN, REPO

KUBECTL = BIN / "kubectl"
DEPLOY = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.37.0"  # the schemas kubernetes-validate ships for the pinned kubectl
# Custom resources of the Prometheus Operator: no schema offline, checked field by field.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
SCRIPTGATE_CONTAINER = "scriptgate"
GIT_SYNC_IMAGE = "registry.k8s.io/git-sync/git-sync:v4.7.1"
# The variables git-sync v4.7.1 reads (main.go): one misspelled would be ignored silently.
_GIT_SYNC_NAMES = """
    ADD_USER ASKPASS_URL COOKIE_FILE CREDENTIAL DEPTH ERROR_FILE EXECHOOK_BACKOFF
    EXECHOOK_COMMAND EXECHOOK_TIMEOUT FILTER GIT GITHUB_APP_APPLICATION_ID GITHUB_APP_CLIENT_ID
    GITHUB_APP_INSTALLATION_ID GITHUB_APP_PRIVATE_KEY GITHUB_APP_PRIVATE_KEY_FILE
    GITHUB_BASE_URL GIT_CONFIG GIT_GC GROUP_WRITE HTTP_BIND HTTP_METRICS HTTP_PPROF
    INIT_MAX_FAILURES INIT_PERIOD LINK MAX_FAILURES ONE_TIME PASSWORD PASSWORD_FILE PERIOD REF
    REPO ROOT SPARSE_CHECKOUT_FILE SSH_KEY_FILE SSH_KNOWN_HOSTS SSH_KNOWN_HOSTS_FILE
    STALE_WORKTREE_TIMEOUT SUBMODULES SYNC_ON_SIGNAL SYNC_TIMEOUT TOUCH_FILE USERNAME VERBOSE
    WEBHOOK_BACKOFF WEBHOOK_METHOD WEBHOOK_SUCCESS_STATUS WEBHOOK_TIMEOUT WEBHOOK_URL
"""
GIT_SYNC_VARIABLES = frozenset(f"GITSYNC_{name}" for name in _GIT_SYNC_NAMES.split())
DOCKERFILE_USER = 10001


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(DEPLOY / "overlays" / overlay))


def find(objects: Any, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]


def one(objects: Any, kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in find(objects, kind) if o["metadata"]["name"] == name]
    return found


def workloads(objects: Any) -> Iterator[dict[str, Any]]:
    yield from find(objects, "Deployment")
    yield from find(objects, "StatefulSet")


def scriptgate_pods(objects: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in find(objects, "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    return found


def environment(objects: Any, c: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: envFrom ConfigMaps and Secrets, then env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env |= one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            ref = source["secretRef"]
            secrets = [s for s in find(objects, "Secret") if s["metadata"]["name"] == ref["name"]]
            if not secrets and ref.get("optional"):
                continue
            (secret,) = secrets
            env |= {k: "" for k in secret.get("data", {})}
    for variable in c.get("env", []):
        env[variable["name"]] = variable.get("value", "")
    return env


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return int(number)


def settings_read() -> set[str]:
    """Every variable Settings.from_env asks for: the settings that exist."""
    asked: set[str] = set()

    class Recording(dict):
        def get(self, key: str, default: Any = None) -> Any:
            asked.add(key)
            return super().get(key, default)

    Settings.from_env(Recording(SCRIPTS_DIR=str(REPO / "scripts")))
    return asked


def readme_settings() -> set[str]:
    """The variables the README's configuration table documents."""
    section = (REPO / "README.md").read_text().partition("## Configuration")[2]
    table = section.partition("\n## ")[0]
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_the_pinned_kubernetes(overlay):
    unchecked = set()
    for obj in rendered(overlay):
        if obj["kind"] in CUSTOM_KINDS:
            unchecked.add(obj["kind"])
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert unchecked == CUSTOM_KINDS


def test_the_overlays_are_the_documented_three():
    assert OVERLAYS == ["external-redis", "scale-out", "small"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_a_scriptgate_container_gets_is_a_documented_setting(overlay):
    real = settings_read()
    documented = readme_settings()
    for name, pod in scriptgate_pods(rendered(overlay)):
        env = environment(rendered(overlay), container(pod, SCRIPTGATE_CONTAINER))
        for variable in env:
            assert variable in documented, f"{name}: {variable} is not in the README"
            if variable.startswith("OTEL_"):  # read by the OpenTelemetry SDK itself
                continue
            assert variable in real, f"{name}: {variable} is not a Scriptgate setting"
        Settings.from_env(  # every value parses (paths moved to what exists here)
            {**env, "SCRIPTS_DIR": str(REPO / "scripts"), "KEYS_FILE": "", "SECRETS_DIR": ""}
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scripts_dir_is_the_link_git_sync_keeps_in_the_shared_volume(overlay):
    objects = rendered(overlay)
    for name, pod in scriptgate_pods(objects):
        app = container(pod, SCRIPTGATE_CONTAINER)
        sync = container(pod, "git-sync")
        assert sync["restartPolicy"] == "Always", f"{name}: git-sync is a native sidecar"
        assert sync["image"] == GIT_SYNC_IMAGE
        sync_env = environment(objects, sync)
        assert set(sync_env) <= GIT_SYNC_VARIABLES, set(sync_env) - GIT_SYNC_VARIABLES
        link = f"{sync_env['GITSYNC_ROOT']}/{sync_env['GITSYNC_LINK']}"
        scripts_dir = environment(objects, app)["SCRIPTS_DIR"]
        assert scripts_dir == link or scripts_dir.startswith(link + "/")
        # Both containers mount one volume, git-sync writable at its root, scriptgate not.
        (writer,) = [m for m in sync["volumeMounts"] if m["mountPath"] == "/git"]
        (reader,) = [m for m in app["volumeMounts"] if m["name"] == writer["name"]]
        assert reader["mountPath"] == sync_env["GITSYNC_ROOT"] == writer["mountPath"]
        assert reader["readOnly"] is True and not writer.get("readOnly")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == writer["name"])
        # scriptgate starts after the first checkout: the sidecar's startup probe gates it.
        assert sync["startupProbe"]["httpGet"]["port"] in {p["name"] for p in sync["ports"]}
        port = port_number(sync, sync["startupProbe"]["httpGet"]["port"])
        assert sync_env["GITSYNC_HTTP_BIND"].endswith(f":{port}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_mounted_where_the_settings_read_them(overlay):
    objects = rendered(overlay)
    for name, pod in scriptgate_pods(objects):
        app = container(pod, SCRIPTGATE_CONTAINER)
        env = environment(objects, app)
        mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        keys_dir, _, keys_name = env["KEYS_FILE"].rpartition("/")
        keys_volume = volumes[mounts[keys_dir]["name"]]["secret"]
        keys_secret = one(objects, "Secret", keys_volume["secretName"])
        assert keys_name in keys_secret["data"], f"{name}: KEYS_FILE is not in its Secret"
        assert "subPath" not in mounts[keys_dir], "a subPath mount never sees an update"
        secrets_volume = volumes[mounts[env["SECRETS_DIR"]]["name"]]["secret"]
        assert secrets_volume["secretName"] == "scriptgate-script-secrets"
        for variable in ("API_KEY", "ADMIN_API_KEY", "REDIS_URL", "JOB_BROKER_URL"):
            assert variable in env, f"{name}: {variable} missing"
            assert not any(e["name"] == variable for e in app.get("env", [])), "not in plain env"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_unprivileged_on_a_read_only_root(overlay):
    for workload in workloads(rendered(overlay)):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, c["name"]
            assert security["allowPrivilegeEscalation"] is False, c["name"]
            assert security["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
            assert "cpu" in c["resources"]["requests"], c["name"]
            if c["name"] == SCRIPTGATE_CONTAINER:
                assert security["runAsUser"] == DOCKERFILE_USER  # the image's own user
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budget_and_autoscaler_select_what_exists(overlay):
    objects = rendered(overlay)
    pods = [w["spec"]["template"] for w in workloads(objects)]

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]

    for service in find(objects, "Service"):
        targets = selected(service["spec"]["selector"])
        assert targets, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            for template in targets:
                names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
                assert port["targetPort"] in names
    serve = one(objects, "Deployment", "scriptgate")
    pod = serve["spec"]["template"]["spec"]
    drain = container(pod, SCRIPTGATE_CONTAINER)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain < pod["terminationGracePeriodSeconds"]
    budget = one(objects, "PodDisruptionBudget", "scriptgate")
    assert selected(budget["spec"]["selector"]["matchLabels"]) == [serve["spec"]["template"]]
    scaler = one(objects, "HorizontalPodAutoscaler", "scriptgate")
    assert scaler["spec"]["scaleTargetRef"]["name"] == "scriptgate"
    assert scaler["spec"]["minReplicas"] <= serve["spec"]["replicas"]
    assert scaler["spec"]["minReplicas"] <= scaler["spec"]["maxReplicas"]
    monitor = one(objects, "ServiceMonitor", "scriptgate")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] in VIEWS
    watched = [
        s
        for s in find(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in watched} == {"scriptgate", "scriptgate-jobs"}
    for service in watched:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_name_platform_endpoints_on_the_platform_port(overlay):
    objects = rendered(overlay)
    for name, pod in scriptgate_pods(objects):
        app = container(pod, SCRIPTGATE_CONTAINER)
        platform_bind = environment(objects, app)["PLATFORM_BIND"]
        for kind in ("readinessProbe", "livenessProbe"):
            probe = app[kind]["httpGet"]
            assert probe["path"] in VIEWS, f"{name} {kind}: {probe['path']}"
            assert platform_bind.endswith(f":{port_number(app, probe['port'])}")


def test_the_prometheus_rule_is_the_shipped_rule_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_rules", DEPLOY / "generate_rules.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    shipped = (DEPLOY / "base" / "prometheusrule.yaml").read_text()
    assert shipped == generator.prometheus_rule(), "run deploy/kubernetes/generate_rules.py"
    files = [
        group
        for path in sorted((REPO / "observability" / "prometheus" / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    for overlay in OVERLAYS:
        rule = one(rendered(overlay), "PrometheusRule", "scriptgate")
        assert rule["spec"]["groups"] == files


def live_command(app: dict[str, Any], ports: dict[int, int]) -> list[str]:
    """The container's command, its binds moved to free 127.0.0.1 ports."""
    argv = [SCRIPTGATE if arg == "scriptgate" else arg for arg in app["command"]]
    return [_moved(arg, ports) for arg in argv]


def _moved(value: str, ports: dict[int, int]) -> str:
    match = re.fullmatch(r"0\.0\.0\.0:(\d+)", value)
    return f"127.0.0.1:{ports[int(match.group(1))]}" if match else value


@pytest.mark.parametrize("deployment", ["scriptgate", "scriptgate-jobs"])
def test_the_rendered_container_answers_its_probes_for_real(tmp_path, deployment):
    """The command and settings of the scale-out overlay, run here: each probe's path on
    the port it names answers 200, and the scripts port (if any) serves a script."""
    from tests.redis_server import available, redis_server

    if not available():
        pytest.fail("redis-server is missing: run make debs")
    objects = rendered("scale-out")
    pod = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    app = container(pod, SCRIPTGATE_CONTAINER)
    ports = {p["containerPort"]: free_port() for p in app["ports"]}
    env = environment(objects, app)
    keys = tmp_path / "keys.toml"
    keys.write_text((DEPLOY / "base" / "keys.toml").read_text())
    with redis_server(tmp_path) as url:
        env |= {
            "SCRIPTS_DIR": str(REPO / "scripts"),
            "KEYS_FILE": str(keys),
            "SECRETS_DIR": "",
            "REDIS_URL": url,
            "JOB_BROKER_URL": url,
            "API_KEY": "deploy-test-key-0123456789",
            "WORKERS": "2",
            "JOB_WORKERS": "1" if deployment == "scriptgate-jobs" else "0",
        }
        env = {k: _moved(v, ports) for k, v in env.items()}
        probes = [app[k]["httpGet"] for k in ("readinessProbe", "livenessProbe")]

        def answered(probe: dict[str, Any]) -> bool:
            port = ports[port_number(app, probe["port"])]
            url = f"http://127.0.0.1:{port}{probe['path']}"
            return requests.get(url, timeout=5).status_code == 200

        with serving(
            live_command(app, ports),
            tmp_path,
            deployment,
            lambda: answered(probes[0]),
            env=clean_env(env),
        ):
            assert all(answered(probe) for probe in probes)
            if "http" in {p["name"] for p in app["ports"]}:
                port = ports[port_number(app, "http")]
                response = requests.get(f"http://127.0.0.1:{port}/hello.py", timeout=10)
                assert response.status_code == 200


DOCS = REPO / "docs" / "kubernetes.md"


def docs_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S)


def test_every_kubectl_kustomize_command_of_the_docs_runs_as_written():
    commands = [
        line
        for block in docs_blocks("sh")
        for line in block.splitlines()
        if line.startswith("kubectl kustomize ")
    ]
    assert len(commands) == len(OVERLAYS)
    for command in commands:
        argv = command.split()
        done = subprocess.run(
            [str(KUBECTL), *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"


def test_the_documented_overlay_sets_the_image_the_repository_and_the_keys(tmp_path):
    (example,) = [b for b in docs_blocks("yaml") if "kind: Kustomization" in b]
    folder = tmp_path / "production"
    folder.mkdir()
    base = os.path.relpath(DEPLOY / "overlays" / "scale-out", folder)  # kustomize: relative
    (folder / "kustomization.yaml").write_text(example.replace("../scale-out", base))
    (folder / "keys.env").write_text("API_KEY=prod-api-key\nADMIN_API_KEY=prod-admin-key\n")
    objects = kustomize(folder)
    assert {o["metadata"].get("namespace") for o in objects} == {"scriptgate"}
    for name, pod in scriptgate_pods(objects):
        app = container(pod, SCRIPTGATE_CONTAINER)
        assert app["image"] == "registry.example.com/platform/scriptgate:0.1.0", name
        sync = environment(objects, container(pod, "git-sync"))
        assert sync["GITSYNC_REPO"] == "https://git.example.com/team/scripts.git"
        keys_ref = next(s["secretRef"]["name"] for s in app["envFrom"] if "secretRef" in s)
        secret = one(objects, "Secret", keys_ref)
        assert set(secret["data"]) == {"API_KEY", "ADMIN_API_KEY"}
        assert all(secret["data"].values()), "the keys of keys.env, not the empty ones"
