"""KEYS_FILE mounted from a Kubernetes Secret: a key rotated in the Secret applies.

The kubelet writes a Secret volume as `..<timestamp>/` folders, a `..data` link to the
current one (swapped by a rename) and one link per file through it; the old folder is
deleted after each swap (kubernetes/pkg/volume/util/atomic_writer.go). Built here the same
way, so the platform is seen to follow the links rather than the folder it started with.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from service.access.keys import key_digest
from service.app import create_app
from service.config import Settings

OLD_KEY = "mounted-old-key-0123456789"
NEW_KEY = "mounted-new-key-9876543210"


def entry(secret: str) -> str:
    return (
        '[keys.bot]\nowner = "ops@example.com"\n'
        f'hash = "sha256:{key_digest(secret).hex()}"\nscopes = ["api:*"]\n'
    )


def publish(volume: Path, generation: int, keys_toml: str) -> None:
    """One update of a Secret volume, as the kubelet's atomic writer does it."""
    folder = volume / f"..2026_12_06_00_00_0{generation}"
    folder.mkdir()
    (folder / "keys.toml").write_text(keys_toml)
    previous = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(folder.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    if not (volume / "keys.toml").is_symlink():
        os.symlink("..data/keys.toml", volume / "keys.toml")
    if previous is not None:
        shutil.rmtree(volume / previous)


def test_a_key_rotated_in_the_mounted_secret_applies_without_a_restart(tmp_path):
    scripts = tmp_path / "scripts" / "api"
    scripts.mkdir(parents=True)
    (scripts / "hello.py").write_text('def main(request):\n    return "hi"\n')
    volume = tmp_path / "keys"
    volume.mkdir()
    publish(volume, 1, entry(OLD_KEY))
    settings = Settings.from_env(
        {
            "SCRIPTS_DIR": str(tmp_path / "scripts"),
            "KEYS_FILE": str(volume / "keys.toml"),
            "LOG_FILE": "",
            "JOB_DATA_DIR": str(tmp_path / "data"),
        }
    )
    client = create_app(settings, log_stdout=False).test_client()
    assert client.get("/api/hello.py", headers={"X-API-Key": OLD_KEY}).status_code == 200
    publish(volume, 2, entry(NEW_KEY))
    assert client.get("/api/hello.py", headers={"X-API-Key": NEW_KEY}).status_code == 200
    assert client.get("/api/hello.py", headers={"X-API-Key": OLD_KEY}).status_code == 401
