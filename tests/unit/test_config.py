"""Configuration is read once and bad values stop startup with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.access.keys import key_digest
from service.config import ConfigError, Settings


@pytest.fixture
def env(tmp_path):
    (tmp_path / "scripts").mkdir()
    return {"SCRIPTS_DIR": str(tmp_path / "scripts")}


def test_defaults(env):
    settings = Settings.from_env(env)
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.script_timeout == 30
    assert settings.api_auth and settings.admin_auth
    assert str(settings.log_file) == "logs/framework.log"


def test_values_are_parsed(env):
    env.update(
        API_TRUSTED_IPS="10.0.0.0/8, ::1, 192.168.1.1",
        API_KEY="a, b",
        ADMIN_AUTH="off",
        SCRIPT_TIMEOUT="2.5",
        LOG_FILE="",
        MAX_BODY_BYTES="1024",
    )
    settings = Settings.from_env(env)
    assert len(settings.api_trusted_ips) == 3
    # Kept as digests only: the cleartext keys do not outlive startup.
    assert settings.api_keys == (key_digest("a"), key_digest("b"))
    assert settings.admin_auth is False
    assert settings.script_timeout == 2.5
    assert settings.log_file is None
    assert settings.max_body_bytes == 1024


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("API_TRUSTED_IPS", "10.0.0.0/33"),
        ("ADMIN_TRUSTED_IPS", "banana"),
        ("TRUSTED_PROXIES", "1.2.3.4/8/9"),
        ("SCRIPT_TIMEOUT", "soon"),
        ("SCRIPT_TIMEOUT", "-1"),
        ("SCRIPT_TIMEOUT", "nan"),
        ("MAX_BODY_BYTES", "1.5"),
        ("API_AUTH", "maybe"),
        ("ADMIN_AUTH", "disabled"),
        ("LOG_LEVEL", "LOUD"),
        ("SCRIPTS_DIR", "/nonexistent/scripts"),
        ("REDIS_URL", "redis-host:6379"),
        ("SECRETS_DIR", "/nonexistent/secrets"),
        ("PLATFORM_TRUSTED_IPS", "10.0.0.0/33"),
    ],
)
def test_bad_value_names_the_variable(env, variable, value):
    env[variable] = value
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert variable in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("API_TRUSTED_IPS", "10.0.0.0/33"), ("SCRIPT_TIMEOUT", "soon"), ("API_AUTH", "maybe")],
)
@pytest.mark.parametrize("command", ["serve", "routes", "check"])
def test_cli_exits_2_with_one_line(env, variable, value, command):
    env[variable] = value
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", command],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]


def test_cli_missing_scripts_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--scripts", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "SCRIPTS_DIR" in result.stderr


def test_bad_keys_file_stops_startup_naming_the_entry(env, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.bot]\nowner = "o"\nhash = "hunter2"\nscopes = ["api:*"]\n')
    env["KEYS_FILE"] = str(keys)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == "KEYS_FILE"
    assert "key 'bot'" in str(caught.value) and "hunter2" not in str(caught.value)


def test_named_key_reusing_api_key_stops_startup(env, tmp_path):
    keys = tmp_path / "keys.toml"
    digest = key_digest("shared-secret").hex()
    keys.write_text(f'[keys.bot]\nowner = "o"\nhash = "sha256:{digest}"\nscopes = ["api:*"]\n')
    env.update(KEYS_FILE=str(keys), API_KEY="shared-secret")
    with pytest.raises(ConfigError, match="reuses an API_KEY"):
        Settings.from_env(env)


def test_redis_url_password_is_never_echoed(env):
    env["REDIS_URL"] = "http://:hunter2@redis:6379"
    with pytest.raises(ConfigError, match="REDIS_URL") as caught:
        Settings.from_env(env)
    assert "hunter2" not in str(caught.value)


def test_caller_settings_are_parsed(env, tmp_path):
    env.update(REDIS_URL="rediss://:pw@cache:6380/1", SECRETS_DIR=str(tmp_path))
    settings = Settings.from_env(env)
    assert settings.redis_url == "rediss://:pw@cache:6380/1"
    assert settings.secrets_dir == tmp_path.resolve()
    assert settings.keys_file is None and settings.platform_trusted_ips == ()
