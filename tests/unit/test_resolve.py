"""Path resolution: which URL reaches which file, and nothing escapes a zone."""

from __future__ import annotations

import os

import pytest

from tests.unit.conftest import ADMIN, API

ALL_KEYS = {**API, **ADMIN}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/hello.py", 200),
        ("/api/hello.py", 200),
        ("/api/reports/daily.py", 200),
        ("/admin/stats.py", 200),
        ("/api/missing.py", 404),
        ("/missing.py", 404),
        ("/", 404),
        ("/api", 404),
        ("/api/", 404),
        ("/hello", 404),
        ("/api/notes.txt", 404),
        ("/api/_private.py", 404),
        ("/api/.hidden.py", 404),
        ("/api/_internal/tool.py", 404),
        ("/api/reports/_helper.py", 404),
        ("/_lib/shared.py", 404),
        ("/api/../hello.py", 404),
        ("/api/reports/../hello.py", 404),
        ("/api/hello.py/", 404),
        ("/api//hello.py", 404),
        ("/api/hello.py.", 404),
        ("/api\\hello.py", 404),
        ("/api/hello.py%00", 404),
        ("/api/hello\x00.py", 404),
        ("/API/hello.py", 404),
        ("/Admin/stats.py", 404),
        ("/.py", 404),
        ("/api/" + "a/" * 40 + "x.py", 404),
        ("/" + "a" * 300 + ".py", 404),
    ],
)
def test_path_resolution(client, path, status):
    response = client.get(path, headers=ALL_KEYS)
    assert response.status_code == status
    if status == 404:
        assert response.get_json()["error"] == "not found"


def test_root_zone_never_serves_api_files(client):
    assert client.get("/api/hello.py", headers=API).status_code == 200
    # The same file through the root zone would be /api/hello.py again; a root path that
    # tries to reach it another way must miss.
    assert client.get("/./api/hello.py", headers=API).status_code == 404


def test_symlink_out_of_zone_is_404(client, scripts_dir, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def main(request):\n    return 'SECRET-OUTSIDE'\n")
    os.symlink(outside, scripts_dir / "api" / "escape.py")
    response = client.get("/api/escape.py", headers=API)
    assert response.status_code == 404
    assert b"SECRET-OUTSIDE" not in response.data


def test_symlink_from_root_into_api_is_404(client, scripts_dir):
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "sneaky.py")
    assert client.get("/sneaky.py").status_code == 404


def test_symlink_inside_zone_is_served(client, scripts_dir):
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "api" / "alias.py")
    assert client.get("/api/alias.py", headers=API).get_json() == {"message": "Hello, Guest!"}


def test_symlink_to_private_file_is_404(client, scripts_dir):
    os.symlink(scripts_dir / "api" / "_private.py", scripts_dir / "api" / "public.py")
    assert client.get("/api/public.py", headers=API).status_code == 404
