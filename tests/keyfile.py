"""A named key's entry in a KEYS_FILE (TOML), as `scriptgate keys new` writes one."""

from __future__ import annotations

import hashlib
from pathlib import Path


def entry(key_id: str, secret: str, scopes: str = '["api:*"]', extra: str = "") -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (
        f'[keys.{key_id}]\nowner = "{key_id}@example.com"\nhash = "sha256:{digest}"\n'
        f"scopes = {scopes}\n{extra}\n"
    )


def api_scripts_and_keys(
    tmp_path: Path, scripts: dict[str, str], keys: dict[str, tuple[str, str]]
) -> tuple[Path, dict[str, str]]:
    """A scripts folder with `scripts` in api/, and a KEYS_FILE of `keys` (id -> (secret,
    scopes)): the folder and the environment of a server with one job worker."""
    folder = tmp_path / "scripts"
    (folder / "api").mkdir(parents=True)
    for name, source in scripts.items():
        (folder / "api" / name).write_text(source)
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("".join(entry(key_id, s, scopes) for key_id, (s, scopes) in keys.items()))
    return folder, {"KEYS_FILE": str(keys_file), "JOB_WORKERS": "1"}
