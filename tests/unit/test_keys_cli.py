"""`scriptgate keys new|check`, and the settings handed across serve's re-exec."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from service import handoff
from service.access.keys import key_digest
from service.access.keys_file import read_keys_file
from service.cli import main
from service.config import Settings, parse_networks


def test_new_prints_the_secret_once_on_stderr_and_the_entry_on_stdout(tmp_path, capsys):
    code = main(
        [
            "keys",
            "new",
            "reports.bot@team-a",
            "--owner",
            'Team "A"',
            "--scope",
            "api:reports/*",
            "--scope",
            "platform:metrics",
            "--methods",
            "get,post",
            "--expires",
            "2027-01-01",
            "--rate-limit",
            "100/minute",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    secret = next(word for word in err.split() if word.startswith("sg_"))
    assert len(secret) == 3 + 43  # 32 random bytes, URL-safe base64
    assert secret not in out
    path = tmp_path / "keys.toml"
    path.write_text(out)
    (key,) = read_keys_file(path)
    assert key.id == "reports.bot@team-a"
    assert key.owner == 'Team "A"'
    assert key.digest == key_digest(secret)
    assert [str(s) for s in key.scopes] == ["api:reports/*", "platform:metrics"]
    assert key.methods == frozenset({"GET", "HEAD", "POST"})
    assert key.expires is not None and key.expires.isoformat() == "2027-01-01T00:00:00+00:00"
    assert key.rate_limit == "100/minute"


def test_two_new_keys_never_share_a_secret(capsys):
    secrets = set()
    for _ in range(2):
        main(["keys", "new", "bot", "--owner", "o", "--scope", "api:*"])
        secrets.add(next(w for w in capsys.readouterr().err.split() if w.startswith("sg_")))
    assert len(secrets) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad id", "--owner", "o", "--scope", "api:*"], "an id is"),
        (["bot", "--owner", "o", "--scope", "root:*"], "is not ZONE:PATTERN"),
        (["bot", "--owner", "o", "--scope", "api:*", "--expires", "soon"], "ISO 8601"),
        (["bot", "--owner", "o", "--scope", "api:*", "--rate-limit", "fast"], "not one limit"),
    ],
)
def test_new_refuses_bad_input_and_prints_no_secret(capsys, args, message):
    assert main(["keys", "new", *args]) == 2
    out, err = capsys.readouterr()
    assert message in err
    assert "sg_" not in out + err


def test_check_names_the_problem(tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.toml"
    main(["keys", "new", "bot", "--owner", "o", "--scope", "api:*"])
    good.write_text(capsys.readouterr().out)
    assert main(["keys", "check", str(good)]) == 0
    assert "1 keys OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[keys.bot]\nowner = "o"\nhash = "hunter2"\nscopes = ["api:*"]\n')
    assert main(["keys", "check", str(bad)]) == 1
    assert "sha256:<64 hex digits>" in capsys.readouterr().err
    monkeypatch.setenv("KEYS_FILE", str(good))
    assert main(["keys", "check"]) == 0


def test_settings_keep_digests_only(tmp_path):
    settings = Settings(scripts_dir=tmp_path, api_keys=("clear-key",), admin_keys=("a", "b"))
    assert settings.api_keys == (key_digest("clear-key"),)
    assert "clear-key" not in repr(settings)
    # A copy stays a copy of the digests, never a digest of a digest.
    assert dataclasses.replace(settings, log_level="DEBUG").api_keys == settings.api_keys


def test_settings_survive_the_handoff_unchanged(tmp_path):
    settings = Settings(
        scripts_dir=tmp_path,
        api_keys=("k1", "k2"),
        api_trusted_ips=parse_networks("x", "10.0.0.0/8, 2001:db8::/32"),
        keys_file=tmp_path / "keys.toml",
        redis_url="redis://:pw@127.0.0.1:6379/0",
        log_file=None,
        script_timeout=2.5,
        platform_bind="127.0.0.1:9000",
    )
    fd = handoff._anonymous_file(json.dumps(handoff.encode(settings)).encode())
    assert handoff.receive(fd) == settings


def test_only_platform_secrets_are_taken_out_of_the_environment():
    environ = {"API_KEY": "a", "REDIS_URL": "redis://x", "KEYS_FILE": "k", "PATH": "/bin"}
    assert handoff.secrets_in(environ) == ["API_KEY", "REDIS_URL"]
    assert handoff.secrets_in({"PATH": "/bin", "API_TRUSTED_IPS": "10.0.0.0/8"}) == []


def test_unknown_setting_types_are_refused_loudly():
    with pytest.raises(TypeError, match="cannot hand over"):
        handoff._encode(object())
    assert handoff._decode({"path": "/x"}) == Path("/x")
