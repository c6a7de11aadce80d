"""The keys file (`KEYS_FILE`, TOML or YAML): named keys by id, re-read on change.

    [keys.reports-bot]
    owner = "team-a@example.com"
    hash = "sha256:8eba6535384d7e95e7b393a8ae12d330899c46e426295c0d31180eed6a730a80"
    scopes = ["api:reports/*"]        # zone:glob on the zone-relative script path
    methods = ["GET"]                 # optional; default every method
    expires = 2027-01-01T00:00:00Z    # optional
    rate_limit = "100/minute"         # optional, the `limits` notation

In YAML the same entries sit under `keys:`. Only digests are stored: `scriptgate keys
new` prints a fresh secret once, and the entry to add.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.access.keys import SCOPE_ZONES, ApiKey, Keyring, Scope, key_digest
from service.small import FileStamp, file_stamp, method_names, parse_iso

DIGEST_PREFIX = "sha256:"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_GENERATED_ID = re.compile(r"^(api|admin)-key-\d+$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {"owner", "hash", "scopes", "methods", "expires", "rate_limit"}


class KeysFileError(ValueError):
    """A keys file that cannot be used; str() names the file and the entry."""


def read_keys_file(path: Path) -> tuple[ApiKey, ...]:
    """Parse and validate a keys file; raises KeysFileError naming what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            document = yaml.safe_load(raw) or {}
        else:
            document = _toml_loads(raw.decode("utf-8"))
    except Exception as exc:  # the parser's own message names the line
        raise KeysFileError(f"{path}: not valid {_format_name(path)}: {exc}") from None
    if not isinstance(document, Mapping) or set(document) - {"keys"}:
        raise KeysFileError(f"{path}: expected only a `keys` table of entries by id")
    entries = document.get("keys") or {}
    if not isinstance(entries, Mapping):
        raise KeysFileError(f"{path}: `keys` must be a table of entries by id")
    keys = [parse_entry(path, str(key_id), entry) for key_id, entry in entries.items()]
    seen: dict[bytes, str] = {}
    for key in keys:
        if key.digest in seen:
            raise KeysFileError(f"{path}: keys {seen[key.digest]} and {key.id} share one secret")
        seen[key.digest] = key.id
    return tuple(keys)


def _toml_loads(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _format_name(path: Path) -> str:
    return "YAML" if path.suffix.lower() in (".yaml", ".yml") else "TOML"


def parse_entry(path: Path, key_id: str, entry: Any) -> ApiKey:
    where = f"{path}: key {key_id!r}"
    if not _ID.match(key_id):
        raise KeysFileError(f"{where}: an id is 1-64 letters, digits, '_', '.', '@' or '-'")
    if _GENERATED_ID.match(key_id):
        raise KeysFileError(f"{where}: ids like api-key-1 are kept for API_KEY/ADMIN_API_KEY")
    if not isinstance(entry, Mapping):
        raise KeysFileError(f"{where}: expected a table with owner, hash and scopes")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    owner = entry.get("owner")
    if not isinstance(owner, str) or not owner.strip():
        raise KeysFileError(f"{where}: `owner` is required (who to ask about this key)")
    return ApiKey(
        id=key_id,
        owner=owner.strip(),
        digest=_parse_hash(where, entry.get("hash")),
        scopes=_parse_scopes(where, entry.get("scopes")),
        methods=_parse_methods(where, entry.get("methods")),
        expires=_parse_expiry(where, entry.get("expires")),
        rate_limit=_parse_rate_limit(where, entry.get("rate_limit")),
    )


def _parse_hash(where: str, raw: Any) -> bytes:
    text = raw.strip().lower() if isinstance(raw, str) else ""
    hexdigest = text[len(DIGEST_PREFIX) :] if text.startswith(DIGEST_PREFIX) else ""
    if not _HEX.match(hexdigest):
        raise KeysFileError(
            f"{where}: `hash` must be sha256:<64 hex digits>, as `scriptgate keys new` prints"
            " it (never the secret itself)"
        )
    digest = bytes.fromhex(hexdigest)
    if digest == key_digest(b""):
        raise KeysFileError(f"{where}: `hash` is the hash of an empty secret")
    return digest


def _parse_scopes(where: str, raw: Any) -> tuple[Scope, ...]:
    if not isinstance(raw, list) or not raw:
        raise KeysFileError(f'{where}: `scopes` must be a non-empty list like ["api:reports/*"]')
    scopes = []
    for item in raw:
        zone, sep, pattern = item.partition(":") if isinstance(item, str) else ("", "", "")
        if not sep or zone not in SCOPE_ZONES or not pattern.strip():
            raise KeysFileError(
                f"{where}: scope {item!r} is not ZONE:PATTERN with ZONE one of "
                f"{', '.join(SCOPE_ZONES)} (for example api:reports/*)"
            )
        scopes.append(Scope(zone, pattern.strip().lstrip("/")))
    return tuple(scopes)


def _parse_methods(where: str, raw: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(m, str) for m in raw):
        raise KeysFileError(f'{where}: `methods` must be a list like ["GET", "POST"]')
    return method_names(raw)


def _parse_expiry(where: str, raw: Any) -> dt.datetime | None:
    """A datetime (no offset: UTC), a date (expires at its start, UTC) or ISO 8601 text."""
    if raw is None:
        return None
    value = raw
    if isinstance(raw, str):
        try:
            value = parse_iso(raw)
        except ValueError:
            raise KeysFileError(f"{where}: `expires` {raw!r} is not an ISO 8601 date") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise KeysFileError(f"{where}: `expires` must be a date or a date and time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _parse_rate_limit(where: str, raw: Any) -> str | None:
    if raw is None:
        return None
    from limits import parse

    try:
        if not isinstance(raw, str) or ";" in raw or "," in raw:
            raise ValueError
        parse(raw)
    except ValueError:
        raise KeysFileError(
            f'{where}: `rate_limit` {raw!r} is not one limit like "100/minute" or "5 per second"'
        ) from None
    return raw.strip()


class KeysFile:
    """The keyring every request sees: one stat of the keys file, re-read on change.

    Each worker checks for itself, so an edit (a new key, a revocation) applies to the
    next call in every worker. A file that no longer parses keeps the last good keys
    (a typo must not lock every caller out) and logs an ERROR; a deleted file revokes
    every named key.
    """

    def __init__(self, path: Path | None, fixed: tuple[ApiKey, ...], log: logging.Logger) -> None:
        self.path = path
        self.fixed = fixed
        self.log = log
        self._lock = threading.Lock()
        self._stamp: FileStamp | None = None
        self._ring = Keyring(fixed)
        # Startup already refused a bad file (config.py). A worker started later (a
        # recycled one) must not fail to boot on a file broken since: it logs and serves
        # the environment's keys alone until the file is fixed (fail closed).
        if path is not None:
            self._reload(path, file_stamp(path))

    def keyring(self) -> Keyring:
        if self.path is not None and file_stamp(self.path) != self._stamp:
            with self._lock:
                current = file_stamp(self.path)
                if current != self._stamp:
                    self._reload(self.path, current)
        return self._ring

    def _reload(self, path: Path, current: FileStamp | None) -> None:
        """Swap in the new keys, then record the stamp: other threads of this worker
        check the stamp without the lock, so it must not announce keys not yet in place."""
        try:
            if current is None:
                self._ring = Keyring(self.fixed)
                self.log.warning("keys file %s is gone: every named key is revoked", path)
                return
            try:
                named = self._checked(read_keys_file(path))
            except KeysFileError as exc:
                kept = len(self._ring.keys) - len(self.fixed)
                self.log.error("keys file not reloaded, %d named keys stay: %s", kept, exc)
                return
            self._ring = Keyring(self.fixed + named)
            self.log.info("keys file %s reloaded: %d named keys", path, len(named))
        finally:
            self._stamp = current

    def _checked(self, named: tuple[ApiKey, ...]) -> tuple[ApiKey, ...]:
        fixed = {key.digest for key in self.fixed}
        for key in named:
            if key.digest in fixed:
                raise KeysFileError(
                    f"{self.path}: key {key.id!r} reuses an API_KEY/ADMIN_API_KEY secret"
                )
        return named
