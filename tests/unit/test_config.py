"""Configuration is read once and bad values stop startup with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.config import ConfigError, Settings
from service.keys import key_digest


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
