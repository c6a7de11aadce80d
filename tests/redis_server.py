"""A real redis-server for tests: a free 127.0.0.1 port, no persistence, always stopped."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.servers import free_port, stop_process, wait_until

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
    argv = [
        str(REDIS_SERVER),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--requirepass",
        PASSWORD,
    ]
    output = workdir / "redis.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        wait_until(
            lambda: proc.poll() is not None or client.ping(),
            timeout=15,
            what="redis-server to answer PING",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited early:\n{output.read_text()[-2000:]}")
        yield url
    finally:
        stop_process(proc)
