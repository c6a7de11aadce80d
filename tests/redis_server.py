"""A real redis-server for tests: a free 127.0.0.1 port, no persistence, always stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import redis

from bench.procs import daemon
from tests.servers import free_port

REDIS_SERVER = Path("/usr/bin/redis-server")
PASSWORD = "redis-test-password-7f3a"


def available() -> bool:
    return REDIS_SERVER.exists()


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """Start redis-server with a password; yields its redis:// URL (password included)."""
    port = free_port()
    workdir = tmp / f"redis-{port}"
    workdir.mkdir(parents=True)
    argv = [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir), "--requirepass", PASSWORD]
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=2)
    with daemon(argv, workdir, "redis-server", client.ping, timeout=15):
        yield url
