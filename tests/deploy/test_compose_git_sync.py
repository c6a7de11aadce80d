"""docker-compose.git-sync.yml: the compose stack takes its scripts from git the same way
the Kubernetes pods do (same git-sync image and settings, SCRIPTS_DIR its link), as
docker-compose itself merges the two files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.test_kubernetes import GIT_SYNC_VARIABLES
from tests.servers import REPO
from tests.stack.test_static import ENV_EXAMPLE, compose_binary, needs

OVERRIDE = REPO / "docker-compose.git-sync.yml"
KUSTOMIZATION = REPO / "deploy" / "kubernetes" / "base" / "kustomization.yaml"
SCRIPTGATE_SERVICES = ("scriptgate-1", "scriptgate-2", "scriptgate-jobs")
SHARED = ("GITSYNC_ROOT", "GITSYNC_LINK", "GITSYNC_DEPTH", "GITSYNC_STALE_WORKTREE_TIMEOUT")


def services(tmp_path: Path, *files: Path) -> dict[str, Any]:
    binary = compose_binary()
    needs(binary)
    env_file = tmp_path / "test.env"
    repo = "GITSYNC_REPO=https://git.example.com/team/scripts.git\n"
    env_file.write_text(ENV_EXAMPLE.read_text() + repo)
    argv = [str(binary)] + [a for f in files for a in ("-f", str(f))]
    argv += ["--env-file", str(env_file), "config", "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["services"]


def kubernetes_git_sync() -> dict[str, str]:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if "git-sync" in g["name"]]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def test_with_the_option_every_replica_serves_git_syncs_link(tmp_path):
    found = services(tmp_path, REPO / "docker-compose.yml", OVERRIDE)
    sync = found["git-sync"]["environment"]
    assert found["git-sync-init"]["environment"]["GITSYNC_ONE_TIME"] == "true"
    for name in SCRIPTGATE_SERVICES:
        service = found[name]
        assert (
            service["environment"]["SCRIPTS_DIR"]
            == f"{sync['GITSYNC_ROOT']}/{sync['GITSYNC_LINK']}"
        )
        (mount,) = [v for v in service["volumes"] if v["source"] == "scripts-git"]
        assert mount["target"] == sync["GITSYNC_ROOT"] and mount["read_only"] is True
        assert service["depends_on"]["git-sync-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert service["environment"]["API_KEY"]  # the rest of the stack's settings stay


def test_compose_and_kubernetes_sync_scripts_one_way(tmp_path):
    found = services(tmp_path, REPO / "docker-compose.yml", OVERRIDE)
    kubernetes = kubernetes_git_sync()
    for name in ("git-sync", "git-sync-init"):
        environment = found[name]["environment"]
        assert set(environment) <= GIT_SYNC_VARIABLES, set(environment) - GIT_SYNC_VARIABLES
        assert {k: environment[k] for k in SHARED} == {k: kubernetes[k] for k in SHARED}
    pod = yaml.safe_load((REPO / "deploy" / "kubernetes" / "base" / "serve.yaml").read_text())
    (sidecar,) = pod["spec"]["template"]["spec"]["initContainers"]
    assert found["git-sync"]["image"] == sidecar["image"] == found["git-sync-init"]["image"]


def test_without_the_option_the_stack_still_serves_its_scripts_folder(tmp_path):
    found = services(tmp_path, REPO / "docker-compose.yml")
    assert "git-sync" not in found
    for name in SCRIPTGATE_SERVICES:
        assert "SCRIPTS_DIR" not in found[name]["environment"]
        assert any(v["target"] == "/app/scripts" for v in found[name]["volumes"])
