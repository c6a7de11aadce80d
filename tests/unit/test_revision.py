"""Scripts kept by git-sync: the app follows its link from one revision to the next.

The link is swapped by git (tests/gitsync.py: a worktree per commit, a renamed symlink),
and the app is built from the environment as `scriptgate serve` builds it, SCRIPTS_DIR
naming the link.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flask import Flask

from service.app import create_app
from service.config import Settings
from service.scripts.revision import current_revision, revision_of, root_of
from tests.gitsync import GitSync, Upstream

V1 = {
    "hello.py": """
        from _lib_greeting import GREETING
        from shared import SUFFIX
        def main(request):
            return {"greeting": GREETING + SUFFIX}
    """,
    "_lib_greeting.py": 'GREETING = "v1"\n',
    "_lib/shared.py": 'SUFFIX = "!"\n',
    "api/report.py": 'def main(request):\n    return "report"\n',
}


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    repo = Upstream(tmp_path / "upstream")
    repo.commit(V1, "v1")
    return repo


@pytest.fixture
def sync(tmp_path: Path, upstream: Upstream) -> GitSync:
    pod = GitSync(tmp_path / "git", upstream)
    pod.sync()
    return pod


def app_on(link: Path, tmp_path: Path) -> Flask:
    settings = Settings.from_env(
        {
            "SCRIPTS_DIR": str(link),
            "API_KEY": "unit-api-key-0123456789",
            "LOG_FILE": str(tmp_path / "framework.log"),
            "JOB_DATA_DIR": str(tmp_path / "data"),
        }
    )
    app = create_app(settings, log_stdout=False)
    app.testing = True
    return app


def test_settings_keep_the_link_so_it_is_followed_after_startup(sync: GitSync, tmp_path):
    settings = Settings.from_env({"SCRIPTS_DIR": str(sync.link)})
    assert settings.scripts_dir == sync.link
    assert settings.scripts_dir.is_symlink()


def test_the_next_call_after_a_swap_runs_the_new_revision_and_its_helpers(sync, tmp_path):
    client = app_on(sync.link, tmp_path).test_client()
    assert client.get("/hello.py").get_json() == {"greeting": "v1!"}
    sync.upstream.commit(
        {"_lib_greeting.py": 'GREETING = "v2"\n', "_lib/shared.py": 'SUFFIX = "?"\n'}
    )
    sync.sync(keep_stale=0)  # the old worktree is gone at once (git-sync's default)
    response = client.get("/hello.py")
    assert response.status_code == 200
    assert response.get_json() == {"greeting": "v2?"}


def test_a_script_deleted_in_the_new_revision_is_404_and_no_longer_listed(sync, tmp_path):
    client = app_on(sync.link, tmp_path).test_client()
    headers = {"X-API-Key": "unit-api-key-0123456789"}
    assert client.get("/api/report.py", headers=headers).status_code == 200
    sync.upstream.commit({"api/report.py": None})
    sync.sync()
    assert client.get("/api/report.py", headers=headers).status_code == 404
    assert client.get("/_platform/routes").get_json()["api"] == []


def test_health_routes_and_metrics_name_the_revision_being_served(sync, tmp_path):
    client = app_on(sync.link, tmp_path).test_client()
    first = sync.current()
    assert client.get("/_platform/health").get_json()["scripts_revision"] == first
    assert client.get("/_platform/routes").headers["X-Scripts-Revision"] == first
    second = sync.upstream.commit({"_lib_greeting.py": 'GREETING = "v2"\n'})
    sync.sync()
    assert client.get("/_platform/health").get_json()["scripts_revision"] == second
    routes = client.get("/_platform/routes")
    assert routes.headers["X-Scripts-Revision"] == second
    assert routes.get_json()["root"] == ["hello.py"]  # the body keeps its zones only
    metrics = client.get("/_platform/metrics").text
    assert f'scriptgate_scripts_revision_info{{revision="{second}"}} 1.0' in metrics
    assert first not in metrics


def test_a_plain_folder_has_no_revision(tmp_path):
    (tmp_path / "scripts").mkdir()
    client = app_on(tmp_path / "scripts", tmp_path).test_client()
    assert client.get("/_platform/health").get_json()["scripts_revision"] is None
    assert "X-Scripts-Revision" not in client.get("/_platform/routes").headers
    assert "scriptgate_scripts_revision_info" not in client.get("/_platform/metrics").text


def test_a_path_found_just_before_a_swap_keeps_its_own_revision_folder(sync: GitSync):
    """Between finding a script and importing it the link may move on: the script's module
    name and helpers stay those of the worktree it was found in."""
    old = sync.current()
    assert old is not None
    old_script = os.path.realpath(sync.link / "api" / "report.py")
    sync.upstream.commit({"api/report.py": 'def main(request):\n    return "new"\n'})
    new = sync.sync()
    assert current_revision(sync.link) == new
    assert root_of(old_script, sync.link) == str(sync.worktree(old).resolve())
    assert root_of(old_script, sync.link / "api") == str(sync.worktree(old).resolve() / "api")
    assert revision_of(old_script) == old


def test_a_worker_keeps_one_copy_of_a_script_however_many_revisions_it_served(sync, tmp_path):
    app = app_on(sync.link, tmp_path)
    client = app.test_client()
    for generation in range(2, 7):
        sync.upstream.commit({"_lib_greeting.py": f'GREETING = "v{generation}"\n'})
        sync.sync()
        assert client.get("/hello.py").get_json() == {"greeting": f"v{generation}!"}
    loaded = app.extensions["scriptgate"].scripts._scripts
    assert list(loaded) == [os.path.realpath(sync.link / "hello.py")]
