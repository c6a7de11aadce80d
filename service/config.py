"""Settings, read and validated once at startup.

Every environment variable of the contract is parsed here and nowhere else, so a bad
value stops the server before it binds a port, with one line naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.access.keys import key_digest
from service.envparse import (
    DEFAULT_SECRETS_DIR,
    ConfigError,
    Network,
    Parse,
    choice,
    count,
    parse_bind,
    parse_broker,
    parse_duration,
    parse_keys,
    parse_keys_file,
    parse_memory,
    parse_networks,
    parse_number,
    parse_redis_url,
    parse_runner_user,
    parse_secrets_dir,
    parse_switch,
    parse_test_clock,
    parse_test_fault,
    parse_timezone,
    with_default,
)
from service.version import __version__

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_SCRIPT_TIMEOUT = 30.0
DEFAULT_LOG_FILE = "logs/framework.log"
DEFAULT_BIND = "127.0.0.1:5000"
DEFAULT_WORKERS = 3
# Threads per worker: a script waiting on I/O holds a thread, not a process. Measured in
# docs/benchmarks.md: 3 workers x 8 threads hold 24 waiting scripts at once (sync: 3) with
# 1.27x the sync design's idle RSS, most of it the platform plane's own process.
DEFAULT_THREADS = 8
WORKER_CLASSES = ("gthread", "sync")
PROXY_TIMEOUT_MARGIN = 15  # seconds a proxy waits beyond MAX_SCRIPT_TIMEOUT
DEFAULT_JOB_DATA_DIR = "data"
DEFAULT_JOB_WORKERS = 2
DEFAULT_JOB_TIMEOUT = 3600.0
DEFAULT_JOB_RETENTION = 86400.0
DEFAULT_JOB_MAX_RESULT_BYTES = 50 * 1024 * 1024
DEFAULT_SCHEDULE_CATCHUP = 3600.0
DEFAULT_JOB_LOG_LIMIT = 1024 * 1024  # bytes of a run's own log lines kept for /logs
DEFAULT_JOB_EVENTS_SECONDS = 60.0  # an SSE response's life; the client resumes after
DEFAULT_SCRIPT_MEMORY_LIMIT = 512 * 1024 * 1024
DEFAULT_SCRIPT_OUTPUT_LIMIT = 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_max_timeout(script_timeout: float) -> float:
    """Twice SCRIPT_TIMEOUT, and at least 30 s above it (60 s by default)."""
    return max(script_timeout * 2, script_timeout + 30)


# Every variable Settings.from_env reads (VARIABLES, and those of prometheus_client and
# gunicorn it honours): runners get the server's environment without them, so a script
# sees the variables an operator set for scripts, and none that configure (or unlock) the
# platform.
PLATFORM_PREFIXES = ("OTEL_", "SCRIPTGATE_", "GUNICORN_")


PLATFORM_VARIABLES: frozenset[str]  # below VARIABLES, from which it is derived


def script_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment runners get: the server's, less every platform variable."""
    return {
        name: value
        for name, value in environ.items()
        if name not in PLATFORM_VARIABLES and not name.startswith(PLATFORM_PREFIXES)
    }


@dataclass(frozen=True)
class Settings:
    """Everything the platform is configured with; build it with `Settings.from_env()`."""

    scripts_dir: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    api_trusted_ips: tuple[Network, ...] = ()
    admin_trusted_ips: tuple[Network, ...] = ()
    # Given as text, kept as SHA-256 digests only (see __post_init__).
    api_keys: tuple[str | bytes, ...] = ()
    admin_keys: tuple[str | bytes, ...] = ()
    keys_file: Path | None = None
    platform_trusted_ips: tuple[Network, ...] = ()
    secrets_dir: Path = Path(DEFAULT_SECRETS_DIR)
    redis_url: str | None = None  # shared store for rate limits and last use
    api_auth: bool = True
    admin_auth: bool = True
    trusted_proxies: tuple[Network, ...] = ()
    script_timeout: float = DEFAULT_SCRIPT_TIMEOUT
    # The longest a script's own TIMEOUT may ask for; 0 means default_max_timeout().
    max_script_timeout: float = 0.0
    script_concurrency: int = 0  # per script, across a server's workers; 0 = no limit
    log_file: Path | None = None
    log_level: str = "INFO"
    log_stdout: bool = True
    metrics_enabled: bool = True
    # Trace ids of sampled calls as exemplars (OpenMetrics only); off for comparisons.
    metrics_exemplars: bool = True
    multiproc_dir: Path | None = None
    version: str = __version__
    # How `scriptgate serve` runs gunicorn.
    bind: str = DEFAULT_BIND
    platform_bind: str | None = None
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    worker_class: str = "gthread"
    max_requests: int = 0
    max_requests_jitter: int = 0
    server_log_level: str = "warning"
    # Jobs (service/jobs): the queue, its store and the job worker processes.
    job_broker_url: str | None = None
    job_data_dir: Path = Path(DEFAULT_JOB_DATA_DIR)
    job_workers: int = DEFAULT_JOB_WORKERS
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    job_retention: float = DEFAULT_JOB_RETENTION
    job_max_result_bytes: int = DEFAULT_JOB_MAX_RESULT_BYTES
    job_log_limit: int = DEFAULT_JOB_LOG_LIMIT
    job_events_seconds: float = DEFAULT_JOB_EVENTS_SECONDS
    # Runner processes (service/runners): a script's memory, its output per call, and the
    # account runners run as when the server starts as root ("" = the server's own).
    script_memory_limit: int = DEFAULT_SCRIPT_MEMORY_LIMIT
    script_output_limit: int = DEFAULT_SCRIPT_OUTPUT_LIMIT
    runner_user: str = ""
    # Schedules (service/schedules): the time zone of a SCHEDULE without SCHEDULE_TZ, how
    # late a missed run may still run once without SCHEDULE_CATCHUP, and for tests only, a
    # file holding the time the scheduler goes by (clock.FileClock) and one that kills
    # or stops the scheduler at a fault point (schedules/faults.py).
    schedule_tz: str = "UTC"
    schedule_catchup: float = DEFAULT_SCHEDULE_CATCHUP
    schedule_test_clock: Path | None = None
    schedule_test_fault: Path | None = None

    def __post_init__(self) -> None:
        # Keys are hashed on the way in: no cleartext key outlives startup (a digest
        # stays a digest when dataclasses.replace() builds a copy).
        for name in ("api_keys", "admin_keys"):
            keys = tuple(k if isinstance(k, bytes) else key_digest(k) for k in getattr(self, name))
            object.__setattr__(self, name, keys)
        if not self.max_script_timeout:
            object.__setattr__(self, "max_script_timeout", default_max_timeout(self.script_timeout))

    @property
    def worker_timeout(self) -> int:
        """gunicorn's own worker timeout: above every script deadline, so the platform
        answers 504 itself and gunicorn only steps in for a worker frozen in C code."""
        return int(self.max_script_timeout + 10)

    @property
    def proxy_timeout(self) -> int:
        """What a reverse proxy in front waits (the shipped Apache's ProxyTimeout): above
        gunicorn's worker timeout, so a caller gets the platform's JSON 504, never the
        proxy's. Whole seconds, as the Apache container's shell computes it."""
        return int(self.max_script_timeout) + PROXY_TIMEOUT_MARGIN

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the contract's environment variables (VARIABLES, then the
        few that depend on each other). Raises ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ
        values = {v.field: v.parse(v.name, env.get(v.name)) for v in VARIABLES}
        scripts_dir = Path(env.get("SCRIPTS_DIR") or "./scripts")
        if not scripts_dir.is_dir():
            raise ConfigError("SCRIPTS_DIR", f"{str(scripts_dir)!r} is not a directory")
        # Absolute, its symlinks kept: a git-sync link is followed at each lookup.
        values["scripts_dir"] = Path(os.path.abspath(scripts_dir))
        multiproc = env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir")
        # `scriptgate serve` creates it when missing; anything else in its place is an error.
        if multiproc and Path(multiproc).exists() and not Path(multiproc).is_dir():
            raise ConfigError("PROMETHEUS_MULTIPROC_DIR", f"{multiproc!r} is not a directory")
        values["multiproc_dir"] = Path(multiproc) if multiproc else None
        workers = "WORKERS" if env.get("WORKERS") else "WEB_CONCURRENCY"  # gunicorn's name
        values["workers"] = count(DEFAULT_WORKERS)(workers, env.get(workers))
        values["max_script_timeout"] = parse_number(
            "MAX_SCRIPT_TIMEOUT",
            env.get("MAX_SCRIPT_TIMEOUT"),
            default_max_timeout(values["script_timeout"]),
        )
        if values["max_script_timeout"] < values["script_timeout"]:
            raise ConfigError(
                "MAX_SCRIPT_TIMEOUT",
                f"{values['max_script_timeout']:g} is below SCRIPT_TIMEOUT "
                f"{values['script_timeout']:g}",
            )
        env_keys = values["api_keys"] + values["admin_keys"]
        values["keys_file"] = parse_keys_file("KEYS_FILE", env.get("KEYS_FILE"), env_keys)
        return cls(**values)


@dataclass(frozen=True)
class Variable:
    """One environment variable: the Settings field it fills, and how it is read."""

    name: str
    field: str
    parse: Parse


# The contract's variables, each described once: from_env reads them, PLATFORM_VARIABLES
# keeps them from scripts, and the README's configuration table documents them (a test
# checks that every one is there).
VARIABLES = (
    Variable("MAX_BODY_BYTES", "max_body_bytes", count(DEFAULT_MAX_BODY_BYTES)),
    Variable("API_TRUSTED_IPS", "api_trusted_ips", parse_networks),
    Variable("ADMIN_TRUSTED_IPS", "admin_trusted_ips", parse_networks),
    Variable("API_KEY", "api_keys", lambda _, raw: parse_keys(raw)),
    Variable("ADMIN_API_KEY", "admin_keys", lambda _, raw: parse_keys(raw)),
    Variable("PLATFORM_TRUSTED_IPS", "platform_trusted_ips", parse_networks),
    Variable("SECRETS_DIR", "secrets_dir", parse_secrets_dir),
    Variable("REDIS_URL", "redis_url", parse_redis_url),
    Variable("API_AUTH", "api_auth", with_default(parse_switch, True)),
    Variable("ADMIN_AUTH", "admin_auth", with_default(parse_switch, True)),
    Variable("TRUSTED_PROXIES", "trusted_proxies", parse_networks),
    Variable(
        "SCRIPT_TIMEOUT", "script_timeout", with_default(parse_number, DEFAULT_SCRIPT_TIMEOUT)
    ),
    Variable("SCRIPT_CONCURRENCY", "script_concurrency", count(0, zero=True)),
    Variable(
        "LOG_FILE",
        "log_file",
        lambda _, raw: (
            None if raw is not None and not raw.strip() else Path(raw or DEFAULT_LOG_FILE)
        ),
    ),
    Variable("LOG_LEVEL", "log_level", choice(LOG_LEVELS, "INFO", str.upper)),
    Variable("METRICS", "metrics_enabled", with_default(parse_switch, True)),
    Variable("METRICS_EXEMPLARS", "metrics_exemplars", with_default(parse_switch, True)),
    Variable("BIND", "bind", lambda v, raw: parse_bind(v, raw, DEFAULT_BIND) or DEFAULT_BIND),
    Variable("PLATFORM_BIND", "platform_bind", with_default(parse_bind, None)),
    Variable("THREADS", "threads", count(DEFAULT_THREADS)),
    Variable("WORKER_CLASS", "worker_class", choice(WORKER_CLASSES, "gthread", str.lower)),
    Variable("SCRIPTGATE_MAX_REQUESTS", "max_requests", count(0, zero=True)),
    Variable("SCRIPTGATE_MAX_REQUESTS_JITTER", "max_requests_jitter", count(0, zero=True)),
    Variable(
        "GUNICORN_LOG_LEVEL", "server_log_level", lambda _, raw: (raw or "warning").strip().lower()
    ),
    Variable("JOB_BROKER_URL", "job_broker_url", lambda _, raw: parse_broker(raw)),
    Variable("JOB_DATA_DIR", "job_data_dir", lambda _, raw: Path(raw or DEFAULT_JOB_DATA_DIR)),
    Variable("JOB_WORKERS", "job_workers", count(DEFAULT_JOB_WORKERS, zero=True)),
    Variable("JOB_TIMEOUT", "job_timeout", with_default(parse_duration, DEFAULT_JOB_TIMEOUT)),
    Variable("JOB_RETENTION", "job_retention", with_default(parse_duration, DEFAULT_JOB_RETENTION)),
    Variable("JOB_MAX_RESULT_BYTES", "job_max_result_bytes", count(DEFAULT_JOB_MAX_RESULT_BYTES)),
    Variable(
        "SCRIPT_MEMORY_LIMIT",
        "script_memory_limit",
        with_default(parse_memory, DEFAULT_SCRIPT_MEMORY_LIMIT),
    ),
    Variable("JOB_LOG_LIMIT", "job_log_limit", count(DEFAULT_JOB_LOG_LIMIT, zero=True)),
    Variable(
        "JOB_EVENTS_SECONDS",
        "job_events_seconds",
        with_default(parse_duration, DEFAULT_JOB_EVENTS_SECONDS),
    ),
    Variable("SCRIPT_OUTPUT_LIMIT", "script_output_limit", count(DEFAULT_SCRIPT_OUTPUT_LIMIT)),
    Variable("RUNNER_USER", "runner_user", parse_runner_user),
    Variable("SCHEDULE_TZ", "schedule_tz", lambda v, raw: parse_timezone(v, raw)),
    Variable(
        "SCHEDULE_CATCHUP",
        "schedule_catchup",
        with_default(parse_duration, DEFAULT_SCHEDULE_CATCHUP),
    ),
    Variable("SCHEDULE_TEST_CLOCK", "schedule_test_clock", lambda v, raw: parse_test_clock(raw)),
    Variable("SCHEDULE_TEST_FAULT", "schedule_test_fault", lambda v, raw: parse_test_fault(raw)),
)
# Read by from_env itself (they depend on each other), and those of other libraries.
OTHER_VARIABLES = (
    "SCRIPTS_DIR",
    "KEYS_FILE",
    "MAX_SCRIPT_TIMEOUT",
    "WORKERS",
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
)
PLATFORM_VARIABLES = frozenset({v.name for v in VARIABLES} | set(OTHER_VARIABLES))
