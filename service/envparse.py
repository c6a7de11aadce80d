"""How each kind of environment value is parsed and checked, for config.Settings.

Every function names the variable in its ConfigError, so a bad value stops startup with
one line that says which setting to fix.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.access.keys import key_digest
from service.access.keys_file import KeysFileError, read_keys_file
from service.runners.limits import RunnerUser, parse_size

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
BROKER_SCHEMES = ("redis://", "rediss://", "unix://")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_SECRETS_DIR = "/run/secrets"  # where Docker and Kubernetes mount secret files
_SWITCH = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}


class ConfigError(ValueError):
    """A configuration value that must stop startup; str() is the one line to print."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable}: {problem}")
        self.variable = variable


def parse_networks(variable: str, raw: str | None) -> tuple[Network, ...]:
    """Parse a comma-separated list of IPs and CIDRs (v4 and v6)."""
    if not raw or not raw.strip():
        return ()
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            # strict=False accepts 10.0.0.1/8 the way firewall configs usually write it.
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(variable, f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


def parse_keys(raw: str | None) -> tuple[str, ...]:
    """Parse one key or several comma-separated keys (rotation); blanks are dropped."""
    if not raw:
        return ()
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def parse_redis_url(variable: str, raw: str | None) -> str | None:
    """A Redis URL (redis://[:password@]host:port/db, rediss://..., redis+unix:///path)."""
    value = (raw or "").strip()
    if not value:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES or not rest:
        # The value may hold a password: name the variable, never echo it.
        raise ConfigError(
            variable, f"not a URL starting {', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    return value


def parse_keys_file(variable: str, raw: str | None, env_keys: tuple[str, ...] = ()) -> Path | None:
    """The keys file, read once here so a bad one stops startup (workers re-read it)."""
    if not raw or not raw.strip():
        return None
    # Absolute, its symlinks kept: a mounted Kubernetes Secret is a link into a folder the
    # kubelet swaps and deletes on each update, so a resolved path would lose every key.
    path = Path(os.path.abspath(raw.strip()))
    try:
        named = read_keys_file(path)
    except KeysFileError as exc:
        raise ConfigError(variable, str(exc)) from None
    taken = {key_digest(k) for k in env_keys}
    for key in named:
        if key.digest in taken:
            raise ConfigError(variable, f"key {key.id!r} reuses an API_KEY/ADMIN_API_KEY secret")
    return path


def parse_secrets_dir(variable: str, raw: str | None) -> Path:
    """Scripts' secret files; an explicitly named folder must exist."""
    if not raw or not raw.strip():
        return Path(DEFAULT_SECRETS_DIR)
    path = Path(raw.strip())
    if not path.is_dir():
        raise ConfigError(variable, f"{raw.strip()!r} is not a directory")
    return path.resolve()


def parse_memory(variable: str, raw: str | None, default: int) -> int:
    """A size such as 512M or 2G (bytes without a unit)."""
    if raw is None or not raw.strip():
        return default
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise ConfigError(variable, str(exc)) from None


def parse_runner_user(variable: str, raw: str | None) -> str:
    """An account that exists here (name or uid), or "" for the server's own."""
    if raw is None or not raw.strip():
        return ""
    try:
        RunnerUser.lookup(raw.strip())
    except KeyError:
        raise ConfigError(variable, f"{raw.strip()!r} is not a user on this machine") from None
    return raw.strip()


def parse_switch(variable: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    try:
        return _SWITCH[raw.strip().lower()]
    except KeyError:
        raise ConfigError(variable, f"{raw!r} is not one of on, off") from None


def parse_number(variable: str, raw: str | None, default: float, *, integer: bool = False) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(variable, f"{raw!r} is not {kind}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(variable, f"{raw!r} must be greater than 0")
    return value


def parse_bind(variable: str, raw: str | None, default: str | None) -> str | None:
    """HOST:PORT, or None for "off" (only where the default allows it)."""
    value = (raw or "").strip() or default
    if value is None or value.lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(variable, f"{value!r} is not HOST:PORT (for example 127.0.0.1:5000)")
    return value


def parse_duration(variable: str, raw: str | None, default: float) -> float:
    """Seconds, or a number with a unit: `90`, `30m`, `12h`, `7d`."""
    text = (raw or "").strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0) if text else 0
    if unit:
        text = text[:-1]
    return parse_number(variable, text or raw, default) * (unit or 1)


def parse_broker(raw: str | None) -> str | None:
    """JOB_BROKER_URL: Redis for a queue shared by several servers; unset, the embedded
    SQLite store. The value may hold a password, so an error never repeats it."""
    url = (raw or "").strip()
    if not url:
        return None
    if not url.startswith(BROKER_SCHEMES):
        raise ConfigError("JOB_BROKER_URL", f"must start with {', '.join(BROKER_SCHEMES)}")
    return url


# How each kind of value is read: (variable, raw text or None) -> value.
Parse = Callable[[str, str | None], Any]


def count(default: int, *, zero: bool = False) -> Parse:
    """A whole number of at least 1 (or 0, with `zero`)."""

    def parse(variable: str, raw: str | None) -> int:
        if zero and raw is not None and raw.strip() == "0":
            return 0
        return int(parse_number(variable, raw, default, integer=True))

    return parse


def choice(options: tuple[str, ...], default: str, normal: Callable[[str], str]) -> Parse:
    """One of `options`, after `normal` (e.g. str.upper)."""

    def parse(variable: str, raw: str | None) -> str:
        value = normal((raw or default).strip())
        if value not in options:
            raise ConfigError(variable, f"{value!r} is not one of {', '.join(options)}")
        return value

    return parse


def with_default(parse: Callable[[str, str | None, Any], Any], default: Any) -> Parse:
    """A parser that takes a default, given its default."""
    return lambda variable, raw: parse(variable, raw, default)


def parse_timezone(variable: str, raw: str | None) -> str:
    from service.schedules.spec import ScheduleError, valid_timezone

    if raw is None or not raw.strip():
        return "UTC"
    try:
        return valid_timezone(raw.strip())
    except ScheduleError as exc:
        raise ConfigError(variable, str(exc).replace("SCHEDULE_TZ: ", "")) from None


def parse_test_clock(raw: str | None) -> Path | None:
    """SCHEDULE_TEST_CLOCK, for tests only: an existing file holding the time (seconds
    since the epoch) the scheduler goes by instead of the system's (schedules/clock.py).
    Checked here so a typo stops the server instead of freezing every schedule."""
    if raw is None or not raw.strip():
        return None
    path = Path(raw.strip())
    try:
        float(path.read_text().strip())
    except (OSError, ValueError):
        raise ConfigError(
            "SCHEDULE_TEST_CLOCK", f"{raw!r} is not a file holding a Unix time (tests only)"
        ) from None
    return path


def parse_test_fault(raw: str | None) -> Path | None:
    """SCHEDULE_TEST_FAULT, for tests only: a file, in an existing folder, that the test
    writes when it wants the scheduler killed or stopped (schedules/faults.py)."""
    if raw is None or not raw.strip():
        return None
    path = Path(raw.strip())
    if not path.parent.is_dir():
        raise ConfigError(
            "SCHEDULE_TEST_FAULT", f"{raw!r} is not in an existing folder (tests only)"
        )
    return path
