"""What `serve` says about the runner user, tried as that user (as root, as CI runs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import script_environment
from service.runners import exposure
from service.runners.limits import RunnerUser, parse_size
from tests.runner_user import RUNNER_USER, world_readable_root

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_runners_as_root_are_named_in_one_line() -> None:
    (line,) = exposure.warnings(None, True, Path("/tmp"), [])
    assert line.startswith("WARNING: runners run as root: set RUNNER_USER")
    assert exposure.warnings(None, False, Path("/tmp"), []) == []


@root_only
def test_a_platform_file_the_runner_user_can_read_is_named() -> None:
    user = RunnerUser.lookup(RUNNER_USER)
    with world_readable_root() as root:
        scripts = root / "scripts"
        scripts.mkdir(mode=0o755)
        open_keys, closed_keys = root / "open.toml", root / "closed.toml"
        open_keys.write_text("")
        open_keys.chmod(0o644)
        closed_keys.write_text("")
        closed_keys.chmod(0o600)
        lines = exposure.warnings(
            user, True, scripts, [("KEYS_FILE", open_keys), ("SECRETS_DIR", closed_keys)]
        )
        assert lines == [
            f"WARNING: RUNNER_USER {RUNNER_USER} can read KEYS_FILE {open_keys}: scripts can "
            "too; make it readable by the server's own user only"
        ]
        scripts.chmod(0o700)
        (line,) = exposure.warnings(user, True, scripts, [])
        assert f"cannot read SCRIPTS_DIR {scripts}" in line


def test_runners_get_the_environment_without_any_platform_variable() -> None:
    env = {
        "PATH": "/usr/bin",
        "DB_HOST": "db.internal",
        "API_KEY": "k",
        "REDIS_URL": "redis://:pw@h/0",
        "KEYS_FILE": "/etc/keys.toml",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
        "SCRIPTGATE_MAX_REQUESTS": "5",
    }
    assert script_environment(env) == {"PATH": "/usr/bin", "DB_HOST": "db.internal"}


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), (1 << 27, 1 << 27)],
)
def test_memory_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["lots", "12X", "1M", "-5M"])
def test_bad_memory_sizes_say_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|least"):
        parse_size(text)
