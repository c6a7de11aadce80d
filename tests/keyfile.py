"""A named key's entry in a KEYS_FILE (TOML), as `scriptgate keys new` writes one."""

from __future__ import annotations

import hashlib


def entry(key_id: str, secret: str, scopes: str = '["api:*"]', extra: str = "") -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (
        f'[keys.{key_id}]\nowner = "{key_id}@example.com"\nhash = "sha256:{digest}"\n'
        f"scopes = {scopes}\n{extra}\n"
    )
