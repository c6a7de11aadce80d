"""Named keys: hashing, scope matching and the keys file, as tables of input and outcome."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import textwrap
from pathlib import Path

import pytest

from service.access.keys import ApiKey, Keyring, Scope, env_keys, key_digest
from service.access.keys_file import KeysFile, KeysFileError, read_keys_file


def ids_of(keyring: Keyring) -> frozenset[str]:
    return frozenset(key.id for key in keyring.keys)


SECRET = "sg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
HASH = "sha256:" + hashlib.sha256(SECRET.encode()).hexdigest()
UTC = dt.timezone.utc


def entry(key_id: str = "bot", **fields: str) -> str:
    body = {"owner": '"team-a"', "hash": f'"{HASH}"', "scopes": '["api:reports/*"]', **fields}
    return f"[keys.{key_id}]\n" + "".join(f"{k} = {v}\n" for k, v in body.items() if v)


def keys_file(tmp_path: Path, text: str, name: str = "keys.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- hashing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "hexdigest"),
    [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("test", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ("ключ", hashlib.sha256("ключ".encode()).hexdigest()),
        (b"test", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ],
)
def test_key_digest_is_sha256_of_the_utf8_bytes(secret, hexdigest):
    assert key_digest(secret).hex() == hexdigest


def test_keyring_identifies_by_digest_within_the_zone_only():
    api = ApiKey("a", "o", key_digest("k-api"), (Scope("api", "*"),))
    admin = ApiKey("b", "o", key_digest("k-admin"), (Scope("admin", "*"),))
    ring = Keyring([api, admin])
    assert ring.identify("api", b"k-api") is api
    assert ring.identify("api", b"k-admin") is None  # a key of another zone is no key here
    assert ring.identify("admin", b"k-admin") is admin
    assert ring.identify("api", b"k-ap") is None
    assert ring.identify("platform", b"k-api") is None
    assert (ring.has_zone("api"), ring.has_zone("platform")) == (True, False)


def test_environment_keys_get_generated_ids_in_their_order():
    keys = env_keys([key_digest("a1"), key_digest("a2")], [key_digest("m1")])
    assert [(k.id, k.owner, k.source) for k in keys] == [
        ("api-key-1", "API_KEY", "env"),
        ("api-key-2", "API_KEY", "env"),
        ("admin-key-1", "ADMIN_API_KEY", "env"),
    ]
    assert [str(s) for s in keys[2].scopes] == ["admin:*", "platform:*"]


# -- scopes ----------------------------------------------------------------------------

SCOPED = ApiKey(
    "bot",
    "o",
    b"",
    (Scope("api", "reports/*"), Scope("api", "hello.py"), Scope("platform", "metrics")),
    methods=frozenset({"GET", "HEAD"}),
)


@pytest.mark.parametrize(
    ("zone", "path", "method", "allowed"),
    [
        ("api", "reports/daily.py", "GET", True),
        ("api", "reports/2026/q1.py", "GET", True),  # `*` crosses folders, as fnmatch does
        ("api", "reports/daily.py", "HEAD", True),
        ("api", "hello.py", "GET", True),
        ("api", "reports/daily.py", "POST", False),  # method outside the key's methods
        ("api", "reportsx.py", "GET", False),
        ("api", "Reports/daily.py", "GET", False),  # case-sensitive, like the paths
        ("api", "hello.py.bak", "GET", False),
        ("api", "other.py", "GET", False),
        ("admin", "reports/daily.py", "GET", False),  # same path, other zone
        ("root", "hello.py", "GET", False),
        ("platform", "metrics", "GET", True),
        ("platform", "keys", "GET", False),
    ],
)
def test_scope_matching(zone, path, method, allowed):
    assert SCOPED.allows(zone, path, method) is allowed


def test_key_without_methods_allows_every_method():
    key = ApiKey("k", "o", b"", (Scope("api", "*"),))
    assert all(key.allows("api", "x.py", m) for m in ("GET", "POST", "DELETE", "PATCH"))


@pytest.mark.parametrize(
    ("expires", "now", "expired"),
    [
        (None, dt.datetime(2099, 1, 1, tzinfo=UTC), False),
        (dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2026, 12, 31, 23, 59, tzinfo=UTC), False),
        (dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC), True),
        (dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2030, 1, 1, tzinfo=UTC), True),
    ],
)
def test_expiry(expires, now, expired):
    key = ApiKey("k", "o", b"", (Scope("api", "*"),), expires=expires)
    assert key.expired(now) is expired


# -- the keys file ---------------------------------------------------------------------


def test_toml_entry_is_read_in_full(tmp_path):
    path = keys_file(
        tmp_path,
        entry(
            "reports-bot",
            methods='["get", "post"]',
            expires="2027-01-01T12:00:00+02:00",
            rate_limit='"100/minute"',
        ),
    )
    (key,) = read_keys_file(path)
    assert key.id == "reports-bot"
    assert key.owner == "team-a"
    assert key.digest == key_digest(SECRET)
    assert key.scopes == (Scope("api", "reports/*"),)
    assert key.methods == frozenset({"GET", "HEAD", "POST"})
    assert key.expires == dt.datetime(2027, 1, 1, 10, 0, tzinfo=UTC)
    assert key.rate_limit == "100/minute"


def test_yaml_file_reads_the_same(tmp_path):
    path = keys_file(
        tmp_path,
        f"""
        keys:
          reports-bot:
            owner: team-a
            hash: {HASH}
            scopes: ["api:reports/*", "admin:stats.py"]
            expires: 2027-01-01
        """,
        "keys.yaml",
    )
    (key,) = read_keys_file(path)
    assert [str(s) for s in key.scopes] == ["api:reports/*", "admin:stats.py"]
    assert key.expires == dt.datetime(2027, 1, 1, tzinfo=UTC)  # a date: its start, UTC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[keys.bot\n", "not valid TOML"),
        (entry(owner=""), "`owner` is required"),
        (entry(hash=f'"{SECRET}"'), "never the secret itself"),
        (entry(hash='"sha256:abc"'), "sha256:<64 hex digits>"),
        (entry(hash=f'"sha256:{hashlib.sha256(b"").hexdigest()}"'), "empty secret"),
        (entry(scopes="[]"), "non-empty list"),
        (entry(scopes='["reports/*"]'), "is not ZONE:PATTERN"),
        (entry(scopes='["root:*"]'), "is not ZONE:PATTERN"),
        (entry(scopes='["api:"]'), "is not ZONE:PATTERN"),
        (entry(methods='"GET"'), "`methods` must be a list"),
        (entry(expires='"next year"'), "not an ISO 8601 date"),
        (entry(rate_limit='"lots"'), "is not one limit"),
        (entry(rate_limit='"1/second;5/minute"'), "is not one limit"),
        (entry(scope='["api:*"]'), "unknown field(s) scope"),
        (entry("api-key-1"), "kept for API_KEY/ADMIN_API_KEY"),
        (entry("bad id!"), "not valid TOML"),
        (entry('"bad id"'), "an id is 1-64 letters"),
        (entry("a") + entry("b"), "share one secret"),
        ("owners = 1\n", "only a `keys` table"),
        ("keys = 3\n", "table of entries by id"),
    ],
)
def test_bad_keys_file_names_the_problem(tmp_path, text, message):
    path = keys_file(tmp_path, text)
    with pytest.raises(KeysFileError) as caught:
        read_keys_file(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert SECRET not in str(caught.value)


def test_missing_keys_file_is_an_error(tmp_path):
    with pytest.raises(KeysFileError, match="cannot read"):
        read_keys_file(tmp_path / "nope.toml")


def test_empty_keys_file_has_no_keys(tmp_path):
    assert read_keys_file(keys_file(tmp_path, "")) == ()


# -- reloading -------------------------------------------------------------------------


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_reload_keeps_the_last_good_keys_and_logs_why(tmp_path, caplog):
    path = keys_file(tmp_path, entry("bot"))
    log = logging.getLogger("test-keys")
    watcher = KeysFile(path, (), log)
    assert ids_of(watcher.keyring()) == {"bot"}
    replace_file(path, entry("bot") + entry("other", hash=f'"{HASH[:-1]}0"'))
    assert ids_of(watcher.keyring()) == {"bot", "other"}
    with caplog.at_level(logging.ERROR, logger="test-keys"):
        replace_file(path, "[keys.bot\n")
        assert ids_of(watcher.keyring()) == {"bot", "other"}
    assert "not reloaded" in caplog.text and str(path) in caplog.text
    replace_file(path, "")
    assert ids_of(watcher.keyring()) == frozenset()
    replace_file(path, entry("bot"))
    path.unlink()
    assert ids_of(watcher.keyring()) == frozenset()  # deleted: every named key revoked


def test_named_key_may_not_reuse_an_environment_key(tmp_path, caplog):
    fixed = env_keys([key_digest(SECRET)], [])
    with caplog.at_level(logging.ERROR, logger="t"):
        watcher = KeysFile(keys_file(tmp_path, entry("bot")), fixed, logging.getLogger("t"))
    assert ids_of(watcher.keyring()) == {"api-key-1"}
    assert "reuses an API_KEY" in caplog.text


def test_worker_started_on_a_broken_file_serves_the_environment_keys(tmp_path, caplog):
    """Startup refuses a bad file; a worker started later must still boot (fail closed)."""
    path = keys_file(tmp_path, "[keys.bot\n")
    with caplog.at_level(logging.ERROR, logger="t"):
        watcher = KeysFile(path, env_keys([key_digest("env")], []), logging.getLogger("t"))
    assert ids_of(watcher.keyring()) == {"api-key-1"}
    assert "not valid TOML" in caplog.text
    replace_file(path, entry("bot"))
    assert ids_of(watcher.keyring()) == {"api-key-1", "bot"}
