"""Keys: who is calling and what they may call, held as SHA-256 digests only.

A key has an id, an owner, scopes (`api:reports/*`: a zone and a glob on the
zone-relative script path), optional methods, expiry and rate limit. Named keys come
from the keys file (keys_file.py); `API_KEY` / `ADMIN_API_KEY` become zone-wide keys
with generated ids (`api-key-1`, `admin-key-1`, ... in the order they are listed).

Why a plain SHA-256: the secrets `scriptgate keys new` makes are 256 random bits, so a
preimage search is hopeless however fast the hash is; slow password hashes (bcrypt,
argon2) exist for guessable human passwords and would cost milliseconds on every
request. Digests are compared with `hmac.compare_digest`, against every key of the zone,
so timing tells nothing about which key came closest.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

SCOPE_ZONES = ("api", "admin", "platform")
ANONYMOUS_ID = "anonymous"


def key_digest(secret: str | bytes) -> bytes:
    """The SHA-256 of a key as the client sends it (UTF-8 for text)."""
    data = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Scope:
    """`zone:pattern`: a glob (fnmatch, case-sensitive) on the zone-relative path."""

    zone: str
    pattern: str

    def matches(self, zone: str, path: str) -> bool:
        return zone == self.zone and fnmatch.fnmatchcase(path, self.pattern)

    def __str__(self) -> str:
        return f"{self.zone}:{self.pattern}"


@dataclass(frozen=True)
class ApiKey:
    id: str
    owner: str
    digest: bytes
    scopes: tuple[Scope, ...]
    methods: frozenset[str] | None = None  # None: every method
    expires: dt.datetime | None = None  # aware, UTC
    rate_limit: str | None = None  # `limits` notation, validated
    source: str = "keys_file"

    @property
    def zones(self) -> frozenset[str]:
        return frozenset(scope.zone for scope in self.scopes)

    def allows(self, zone: str, path: str, method: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return any(scope.matches(zone, path) for scope in self.scopes)

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires is not None and (now or utcnow()) >= self.expires


@dataclass(frozen=True)
class Caller:
    """Who made a request: a key's id, or `anonymous`."""

    id: str
    key: ApiKey | None = None


ANONYMOUS = Caller(ANONYMOUS_ID)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Keyring:
    """Every key at one moment (the environment's and the keys file's), by zone."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)
        self._by_zone = {
            zone: tuple(k for k in self.keys if zone in k.zones) for zone in SCOPE_ZONES
        }

    def has_zone(self, zone: str) -> bool:
        """A zone no key may call is closed (fail closed)."""
        return bool(self._by_zone.get(zone))

    def identify(self, zone: str, presented: bytes) -> ApiKey | None:
        """The key of this zone whose digest matches; every candidate is compared."""
        candidate = key_digest(presented)
        found = None
        for key in self._by_zone.get(zone, ()):
            if hmac.compare_digest(candidate, key.digest):
                found = key
        return found


def env_keys(api: Iterable[bytes], admin: Iterable[bytes]) -> tuple[ApiKey, ...]:
    """`API_KEY` / `ADMIN_API_KEY` digests as zone-wide keys, as they always were.

    Admin keys also read the guarded platform endpoints (`/_platform/keys`, and routes
    and metrics when `PLATFORM_TRUSTED_IPS` is set).
    """
    made = [
        ApiKey(f"api-key-{n}", "API_KEY", d, (Scope("api", "*"),), source="env")
        for n, d in enumerate(api, 1)
    ]
    admin_scopes = (Scope("admin", "*"), Scope("platform", "*"))
    made += [
        ApiKey(f"admin-key-{n}", "ADMIN_API_KEY", d, admin_scopes, source="env")
        for n, d in enumerate(admin, 1)
    ]
    return tuple(made)
