"""Settings, read and validated once at startup.

Every environment variable of the contract is parsed here and nowhere else, so a bad
value stops the server before it binds a port, with one line naming the variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service import __version__

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_SCRIPT_TIMEOUT = 30.0
DEFAULT_LOG_FILE = "logs/framework.log"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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


@dataclass(frozen=True)
class Settings:
    """Everything the platform is configured with; build it with `Settings.from_env()`."""

    scripts_dir: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_trusted_ips: tuple[Network, ...] = ()
    admin_trusted_ips: tuple[Network, ...] = ()
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    api_auth: bool = True
    admin_auth: bool = True
    trusted_proxies: tuple[Network, ...] = ()
    script_timeout: float = DEFAULT_SCRIPT_TIMEOUT
    log_file: Path | None = None
    log_level: str = "INFO"
    log_stdout: bool = True
    metrics_enabled: bool = True
    multiproc_dir: Path | None = None
    version: str = __version__
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def max_script_timeout(self) -> float:
        """The longest a script's own TIMEOUT may ask for.

        gunicorn's worker timeout sits above this (see gunicorn_conf), so the platform's
        504 always answers before gunicorn kills the worker.
        """
        return max(self.script_timeout * 2, self.script_timeout + 30)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the contract's environment variables.

        Raises ConfigError naming the first bad variable.
        """
        env = os.environ if environ is None else environ
        scripts_dir = Path(env.get("SCRIPTS_DIR") or "./scripts")
        if not scripts_dir.is_dir():
            raise ConfigError("SCRIPTS_DIR", f"{str(scripts_dir)!r} is not a directory")
        log_file_raw = env.get("LOG_FILE", DEFAULT_LOG_FILE)
        log_level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        multiproc = env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir")
        if multiproc and not Path(multiproc).is_dir():
            raise ConfigError("PROMETHEUS_MULTIPROC_DIR", f"{multiproc!r} is not a directory")
        return cls(
            scripts_dir=scripts_dir.resolve(),
            max_body_bytes=int(
                parse_number(
                    "MAX_BODY_BYTES",
                    env.get("MAX_BODY_BYTES"),
                    DEFAULT_MAX_BODY_BYTES,
                    integer=True,
                )
            ),
            api_trusted_ips=parse_networks("API_TRUSTED_IPS", env.get("API_TRUSTED_IPS")),
            admin_trusted_ips=parse_networks("ADMIN_TRUSTED_IPS", env.get("ADMIN_TRUSTED_IPS")),
            api_keys=parse_keys(env.get("API_KEY")),
            admin_keys=parse_keys(env.get("ADMIN_API_KEY")),
            api_auth=parse_switch("API_AUTH", env.get("API_AUTH"), True),
            admin_auth=parse_switch("ADMIN_AUTH", env.get("ADMIN_AUTH"), True),
            trusted_proxies=parse_networks("TRUSTED_PROXIES", env.get("TRUSTED_PROXIES")),
            script_timeout=parse_number(
                "SCRIPT_TIMEOUT", env.get("SCRIPT_TIMEOUT"), DEFAULT_SCRIPT_TIMEOUT
            ),
            log_file=Path(log_file_raw) if log_file_raw.strip() else None,
            log_level=log_level,
            metrics_enabled=parse_switch("METRICS", env.get("METRICS"), True),
            multiproc_dir=Path(multiproc) if multiproc else None,
        )
