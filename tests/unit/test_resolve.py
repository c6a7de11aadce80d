"""Path resolution: which URL reaches which file, and nothing escapes a zone."""

from __future__ import annotations

import os

import pytest

from service.scripts.problems import NoScript
from service.scripts.resolve import ZONES, Target, locate, located_scripts
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


def test_a_listing_names_what_a_request_reaches_each_by_its_real_path(scripts_dir, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def main(request):\n    return 'x'\n")
    os.symlink(outside, scripts_dir / "api" / "escape.py")
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "sneaky.py")
    os.symlink(scripts_dir / "api" / "hello.py", scripts_dir / "api" / "alias.py")
    os.symlink(scripts_dir / "api" / "_private.py", scripts_dir / "api" / "public.py")
    listed = {zone: dict(located_scripts(scripts_dir, zone)) for zone in ZONES}
    assert "alias.py" in listed["api"]
    assert not {"escape.py", "public.py"} & listed["api"].keys()
    assert "sneaky.py" not in listed["root"]
    for zone, found in listed.items():
        for rel, real in found.items():
            assert real == locate(scripts_dir, Target(zone, rel)) == os.path.realpath(real)


def test_a_zone_folder_that_is_a_symlink_lists_what_it_serves_nothing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.py").write_text("def main(request):\n    return 'x'\n")
    root = tmp_path / "linked-scripts"
    root.mkdir()
    os.symlink(elsewhere, root / "api")
    assert located_scripts(root, "api") == []
    with pytest.raises(NoScript):
        locate(root, Target("api", "x.py"))
