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
DEFAULT_JOB_LOG_LIMIT = 1024 * 1024  # bytes of a run's own log lines kept for /logs
DEFAULT_JOB_EVENTS_SECONDS = 60.0  # an SSE response's life; the client resumes after
DEFAULT_SCRIPT_MEMORY_LIMIT = 512 * 1024 * 1024
DEFAULT_SCRIPT_OUTPUT_LIMIT = 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def default_max_timeout(script_timeout: float) -> float:
    """Twice SCRIPT_TIMEOUT, and at least 30 s above it (60 s by default)."""
    return max(script_timeout * 2, script_timeout + 30)


# Every variable Settings.from_env reads (and prometheus_client's and OpenTelemetry's):
# runners get the server's environment without them, so a script sees the variables
# an operator set for scripts, and none that configure (or unlock) the platform.
PLATFORM_VARIABLES = frozenset(
    {
        "SCRIPTS_DIR",
        "MAX_BODY_BYTES",
        "API_TRUSTED_IPS",
        "ADMIN_TRUSTED_IPS",
        "API_KEY",
        "ADMIN_API_KEY",
        "KEYS_FILE",
        "PLATFORM_TRUSTED_IPS",
        "SECRETS_DIR",
        "REDIS_URL",
        "API_AUTH",
        "ADMIN_AUTH",
        "TRUSTED_PROXIES",
        "SCRIPT_TIMEOUT",
        "MAX_SCRIPT_TIMEOUT",
        "SCRIPT_CONCURRENCY",
        "LOG_FILE",
        "LOG_LEVEL",
        "METRICS",
        "PROMETHEUS_MULTIPROC_DIR",
        "prometheus_multiproc_dir",
        "BIND",
        "PLATFORM_BIND",
        "WORKERS",
        "WEB_CONCURRENCY",
        "THREADS",
        "WORKER_CLASS",
        "SCRIPTGATE_MAX_REQUESTS",
        "SCRIPTGATE_MAX_REQUESTS_JITTER",
        "GUNICORN_LOG_LEVEL",
        "JOB_BROKER_URL",
        "JOB_DATA_DIR",
        "JOB_WORKERS",
        "JOB_TIMEOUT",
        "JOB_RETENTION",
        "JOB_MAX_RESULT_BYTES",
        "SCRIPT_MEMORY_LIMIT",
        "SCRIPT_OUTPUT_LIMIT",
        "RUNNER_USER",
        "METRICS_EXEMPLARS",
    }
)
PLATFORM_PREFIXES = ("OTEL_", "SCRIPTGATE_", "GUNICORN_")


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
        # `scriptgate serve` creates it when missing; anything else in its place is an error.
        if multiproc and Path(multiproc).exists() and not Path(multiproc).is_dir():
            raise ConfigError("PROMETHEUS_MULTIPROC_DIR", f"{multiproc!r} is not a directory")
        script_timeout = parse_number(
            "SCRIPT_TIMEOUT", env.get("SCRIPT_TIMEOUT"), DEFAULT_SCRIPT_TIMEOUT
        )
        max_timeout = parse_number(
            "MAX_SCRIPT_TIMEOUT",
            env.get("MAX_SCRIPT_TIMEOUT"),
            default_max_timeout(script_timeout),
        )
        if max_timeout < script_timeout:
            raise ConfigError(
                "MAX_SCRIPT_TIMEOUT", f"{max_timeout:g} is below SCRIPT_TIMEOUT {script_timeout:g}"
            )
        worker_class = (env.get("WORKER_CLASS") or "gthread").strip().lower()
        if worker_class not in WORKER_CLASSES:
            raise ConfigError(
                "WORKER_CLASS", f"{worker_class!r} is not one of {', '.join(WORKER_CLASSES)}"
            )

        def count(variable: str, default: int, *, zero: bool = False) -> int:
            raw = env.get(variable)
            if zero and raw is not None and raw.strip() == "0":
                return 0
            return int(parse_number(variable, raw, default, integer=True))

        return cls(
            # Absolute, its symlinks kept: a git-sync link is followed at each lookup.
            scripts_dir=Path(os.path.abspath(scripts_dir)),
            max_body_bytes=count("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            api_trusted_ips=parse_networks("API_TRUSTED_IPS", env.get("API_TRUSTED_IPS")),
            admin_trusted_ips=parse_networks("ADMIN_TRUSTED_IPS", env.get("ADMIN_TRUSTED_IPS")),
            api_keys=parse_keys(env.get("API_KEY")),
            admin_keys=parse_keys(env.get("ADMIN_API_KEY")),
            keys_file=parse_keys_file(
                "KEYS_FILE",
                env.get("KEYS_FILE"),
                parse_keys(env.get("API_KEY")) + parse_keys(env.get("ADMIN_API_KEY")),
            ),
            platform_trusted_ips=parse_networks(
                "PLATFORM_TRUSTED_IPS", env.get("PLATFORM_TRUSTED_IPS")
            ),
            secrets_dir=parse_secrets_dir("SECRETS_DIR", env.get("SECRETS_DIR")),
            redis_url=parse_redis_url("REDIS_URL", env.get("REDIS_URL")),
            api_auth=parse_switch("API_AUTH", env.get("API_AUTH"), True),
            admin_auth=parse_switch("ADMIN_AUTH", env.get("ADMIN_AUTH"), True),
            trusted_proxies=parse_networks("TRUSTED_PROXIES", env.get("TRUSTED_PROXIES")),
            script_timeout=script_timeout,
            max_script_timeout=max_timeout,
            script_concurrency=count("SCRIPT_CONCURRENCY", 0, zero=True),
            log_file=Path(log_file_raw) if log_file_raw.strip() else None,
            log_level=log_level,
            metrics_enabled=parse_switch("METRICS", env.get("METRICS"), True),
            metrics_exemplars=parse_switch("METRICS_EXEMPLARS", env.get("METRICS_EXEMPLARS"), True),
            multiproc_dir=Path(multiproc) if multiproc else None,
            bind=parse_bind("BIND", env.get("BIND"), DEFAULT_BIND) or DEFAULT_BIND,
            platform_bind=parse_bind("PLATFORM_BIND", env.get("PLATFORM_BIND"), None),
            workers=count("WORKERS" if env.get("WORKERS") else "WEB_CONCURRENCY", DEFAULT_WORKERS),
            threads=count("THREADS", DEFAULT_THREADS),
            worker_class=worker_class,
            max_requests=count("SCRIPTGATE_MAX_REQUESTS", 0, zero=True),
            max_requests_jitter=count("SCRIPTGATE_MAX_REQUESTS_JITTER", 0, zero=True),
            server_log_level=(env.get("GUNICORN_LOG_LEVEL") or "warning").strip().lower(),
            job_broker_url=parse_broker(env.get("JOB_BROKER_URL")),
            job_data_dir=Path(env.get("JOB_DATA_DIR") or DEFAULT_JOB_DATA_DIR),
            job_workers=count("JOB_WORKERS", DEFAULT_JOB_WORKERS, zero=True),
            job_timeout=parse_duration("JOB_TIMEOUT", env.get("JOB_TIMEOUT"), DEFAULT_JOB_TIMEOUT),
            job_retention=parse_duration(
                "JOB_RETENTION", env.get("JOB_RETENTION"), DEFAULT_JOB_RETENTION
            ),
            job_max_result_bytes=count("JOB_MAX_RESULT_BYTES", DEFAULT_JOB_MAX_RESULT_BYTES),
            job_log_limit=count("JOB_LOG_LIMIT", DEFAULT_JOB_LOG_LIMIT, zero=True),
            job_events_seconds=parse_duration(
                "JOB_EVENTS_SECONDS", env.get("JOB_EVENTS_SECONDS"), DEFAULT_JOB_EVENTS_SECONDS
            ),
            script_memory_limit=parse_memory(
                "SCRIPT_MEMORY_LIMIT", env.get("SCRIPT_MEMORY_LIMIT"), DEFAULT_SCRIPT_MEMORY_LIMIT
            ),
            script_output_limit=count("SCRIPT_OUTPUT_LIMIT", DEFAULT_SCRIPT_OUTPUT_LIMIT),
            runner_user=parse_runner_user("RUNNER_USER", env.get("RUNNER_USER")),
        )
