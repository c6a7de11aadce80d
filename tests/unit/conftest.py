"""Isolated apps over a throwaway scripts folder, built with create_app(Settings(...))."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from service.app import create_app
from service.config import Settings

API_KEY = "unit-api-key-0123456789"
ADMIN_KEY = "unit-admin-key-9876543210"

SCRIPTS = {
    "hello.py": '''
        """Root hello."""
        def main(request):
            return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
    ''',
    "api/hello.py": '''
        """Say hello. Second line is not the summary."""
        METHODS = ["GET"]
        def main(request):
            return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
    ''',
    "api/reports/daily.py": '''
        """Daily report."""
        from _helper import double
        from shared import PREFIX
        def main(request):
            return {"value": double(21), "prefix": PREFIX}
    ''',
    "api/reports/_helper.py": """
        def double(x):
            return 2 * x
    """,
    "_lib/shared.py": """
        PREFIX = "lib"
    """,
    "admin/stats.py": """
        def main(request):
            return {"status": "admin ok"}
    """,
    "api/_private.py": """
        def main(request):
            return "never served"
    """,
    "api/.hidden.py": """
        def main(request):
            return "never served"
    """,
    "api/_internal/tool.py": """
        def main(request):
            return "never served"
    """,
    "api/notes.txt": "not a script",
}


def write_scripts(root: Path, files: dict[str, str]) -> None:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip())


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Path:
    root = tmp_path / "scripts"
    (root / "api").mkdir(parents=True)
    (root / "admin").mkdir()
    write_scripts(root, SCRIPTS)
    return root


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "framework.log"


@pytest.fixture
def make_app(scripts_dir: Path, log_file: Path) -> Callable[..., Flask]:
    """create_app over the test scripts; keyword arguments override Settings fields."""

    def factory(**overrides) -> Flask:
        fields = {
            "scripts_dir": scripts_dir.resolve(),
            "api_keys": (API_KEY,),
            "admin_keys": (ADMIN_KEY,),
            "log_file": log_file,
            "log_stdout": False,
            "script_timeout": 2.0,
            "job_data_dir": scripts_dir.parent / "data",
        }
        fields.update(overrides)
        app = create_app(Settings(**fields))
        app.testing = True
        return app

    return factory


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def log_records(log_file: Path) -> list[dict]:
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines()]


API = {"X-API-Key": API_KEY}
ADMIN = {"X-Admin-Key": ADMIN_KEY}
