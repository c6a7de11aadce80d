"""`scriptgate keys new|check`: make a key (the secret shown once), check a keys file.

    scriptgate keys new reports-bot --owner team-a@example.com --scope 'api:reports/*'

prints the secret on stderr, once, and the keys-file entry (its hash only) on stdout, so
`... >> keys.toml` appends the entry and leaves the secret on the terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import secrets
import sys
from pathlib import Path

from service.access.keys import key_digest
from service.access.keys_file import KeysFileError, parse_entry, read_keys_file
from service.small import iso_z

SECRET_PREFIX = "sg_"  # noqa: S105 (a prefix, not a secret): lets secret scanners (and people) recognise a Scriptgate key
SECRET_BYTES = 32  # 256 random bits: why a plain SHA-256 is enough (keys.py)
EXIT_BAD_INPUT = 2
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # TOML keys that need no quotes


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def entry_text(
    key_id: str,
    owner: str,
    secret: str,
    scopes: list[str],
    methods: list[str] | None = None,
    expires: dt.datetime | None = None,
    rate_limit: str | None = None,
) -> str:
    """The TOML entry for a keys file; JSON strings are valid TOML basic strings."""
    lines = [
        f"[keys.{key_id if _BARE_KEY.match(key_id) else json.dumps(key_id)}]",
        f"owner = {json.dumps(owner)}",
        f'hash = "sha256:{key_digest(secret).hex()}"',
        f"scopes = {json.dumps(scopes)}",
    ]
    if methods:
        lines.append(f"methods = {json.dumps([m.upper() for m in methods])}")
    if expires is not None:
        stamp = iso_z(expires, "auto")
        lines.append(f"expires = {json.dumps(stamp)}")
    if rate_limit:
        lines.append(f"rate_limit = {json.dumps(rate_limit)}")
    return "\n".join(lines) + "\n"


def new(args: argparse.Namespace) -> int:
    secret = new_secret()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    fields = {"owner": args.owner, "hash": "sha256:" + key_digest(secret).hex()}
    fields["scopes"] = args.scope
    if methods:
        fields["methods"] = methods
    if args.expires:
        fields["expires"] = args.expires
    if args.rate_limit:
        fields["rate_limit"] = args.rate_limit
    try:
        key = parse_entry(Path("scriptgate keys new"), args.id, fields)
    except KeysFileError as exc:
        print(str(exc).replace("`", ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    text = entry_text(key.id, key.owner, secret, args.scope, methods, key.expires, key.rate_limit)
    print(
        f"Key {key.id!r}: its secret, shown this once (hand it to the caller; it is stored"
        f" nowhere):\n\n    {secret}\n\nAdd this entry to KEYS_FILE; every worker applies it"
        " on its next request:\n",
        file=sys.stderr,
    )
    print(text)
    return 0


def check(args: argparse.Namespace, keys_file: Path | None) -> int:
    path = Path(args.file) if args.file else keys_file
    if path is None:
        print("no keys file: give one, or set KEYS_FILE", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        keys = read_keys_file(path)
    except KeysFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: {len(keys)} keys OK")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p_keys = sub.add_parser("keys", help="make a named key, or check a keys file")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p_new = keys_sub.add_parser("new", help="a fresh secret (shown once) and its entry")
    p_new.add_argument("id", help="the key's id, as logs and metrics will name the caller")
    p_new.add_argument("--owner", required=True, help="who to ask about this key")
    p_new.add_argument(
        "--scope",
        action="append",
        required=True,
        help="ZONE:PATTERN it may call, e.g. 'api:reports/*', 'admin:*', 'platform:metrics'"
        " (repeat for several)",
    )
    p_new.add_argument("--methods", help="comma-separated methods (default: all)")
    p_new.add_argument("--expires", help="ISO 8601 date or date and time (UTC if no offset)")
    p_new.add_argument("--rate-limit", help="e.g. 100/minute, 5 per second")
    p_check = keys_sub.add_parser("check", help="validate a keys file; non-zero exit if bad")
    p_check.add_argument("file", nargs="?", help="the keys file (default $KEYS_FILE)")
    return p_keys
