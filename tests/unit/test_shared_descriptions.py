"""A script described by one process's runner is known to the server's other processes
(one run folder) without an import of their own, while its files are unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flask import Flask

from service.app import create_app
from service.scripts.resolve import Target, locate
from tests.unit.conftest import API, write_scripts

TYPED = '''
    """Totals for one day."""
    def main(request, day: str, top: int = 5):
        return {"day": day, "top": top}
'''


def runtime(app):
    return app.extensions["scriptgate"]


def two_processes(make_app, run_dir: Path) -> tuple[Flask, Flask]:
    """Two apps of one server: its run folder shared, as `serve` shares it."""
    settings = runtime(make_app()).settings
    apps = create_app(settings, run_dir=run_dir), create_app(settings, run_dir=run_dir)
    for app in apps:
        app.testing = True
    return apps


@pytest.fixture
def described(make_app, scripts_dir: Path, tmp_path: Path) -> tuple[Flask, Flask, dict]:
    """Two apps of one server; the first has described every script (routes?detail=1)."""
    write_scripts(scripts_dir, {"api/typed.py": TYPED})
    first, second = two_processes(make_app, tmp_path / "run")
    return first, second, first.test_client().get("/_platform/routes?detail=1").get_json()


def zygote_started(app) -> bool:
    """Whether this app has started a runner (its zygote) at all."""
    return runtime(app).runners.zygote.proc is not None


def test_a_second_process_lists_what_the_first_described_without_importing(described) -> None:
    first, second, routes = described
    assert {e["path"]: e["state"] for e in routes["api"]}["typed.py"] == "ok"
    assert zygote_started(first) and not zygote_started(second)

    listed = second.test_client().get("/_platform/console/scripts", headers=API).get_json()
    typed = {s["url"]: s for s in listed["scripts"]}["/api/typed.py"]
    assert typed["summary"] == "Totals for one day." and not typed.get("pending")
    answer = second.test_client().get("/_platform/routes?detail=1").get_json()
    assert {e["path"]: e for e in answer["api"]}["typed.py"]["parameters"] == {
        "day": "query",
        "top": "query",
    }
    assert not zygote_started(second), "described from the shared folder, not imported"
    # A call still runs in a runner of the second process's own.
    call = second.test_client().get("/api/typed.py?day=mon", headers=API)
    assert call.get_json() == {"day": "mon", "top": 5}


def test_a_changed_script_is_imported_again_not_taken_from_the_shared_folder(
    described, scripts_dir: Path
) -> None:
    _, second, _ = described
    path = scripts_dir / "api" / "typed.py"
    path.write_text('"""Edited."""\ndef main(request):\n    return "new"\n')
    os.utime(path, ns=(1, 1))  # a different stamp, whatever the clock's resolution
    real = locate(scripts_dir.resolve(), Target("api", "typed.py"))
    assert runtime(second).scripts.cached(real) is None
    answer = second.test_client().get("/_platform/routes?detail=1").get_json()
    assert {e["path"]: e for e in answer["api"]}["typed.py"]["summary"] == "Edited."
    assert zygote_started(second)


def test_a_damaged_shared_entry_costs_an_import_and_nothing_else(
    described, scripts_dir: Path, tmp_path: Path
) -> None:
    _, second, _ = described
    entries = list((tmp_path / "run" / "descriptions").glob("*.json"))
    assert entries
    for entry in entries:
        entry.write_text('{"path": "elsewhere", "stamps": [], "info": {}}')
    answer = second.test_client().get("/_platform/routes?detail=1").get_json()
    assert {e["path"]: e for e in answer["api"]}["typed.py"]["summary"] == "Totals for one day."
    assert zygote_started(second)
    real = locate(scripts_dir.resolve(), Target("api", "typed.py"))
    rewritten = [json.loads(entry.read_text())["path"] for entry in entries]
    assert real in rewritten  # by the second process's own import


def test_a_script_served_from_a_shared_description_shows_its_series(
    make_app, scripts_dir: Path, tmp_path: Path
) -> None:
    """Its CONCURRENCY and its error series at 0, as if this process had imported it."""
    write_scripts(
        scripts_dir,
        {"api/limited.py": 'CONCURRENCY = 2\ndef main(request):\n    return "ok"\n'},
    )
    first, second = two_processes(make_app, tmp_path / "run")
    first.test_client().get("/_platform/routes?detail=1")
    assert second.test_client().get("/api/limited.py", headers=API).status_code == 200
    text = second.test_client().get("/_platform/metrics").get_data(as_text=True)
    labels = 'script="limited.py",zone="api"'
    assert f"scriptgate_script_concurrency_limit{{{labels}}} 2.0" in text
    assert f'scriptgate_script_errors_total{{kind="timeout",{labels}}} 0.0' in text
