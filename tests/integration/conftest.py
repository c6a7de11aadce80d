"""Fixtures the integration tests share: a real redis-server per module, and the job queue
and store a test runs against (each test parametrized over SQLite and a flushed Redis),
and the schedule store beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis(redis_url: str) -> str:
    """The module's Redis, emptied for this test (each test its own queue and history)."""
    import redis as redis_client

    redis_client.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture(params=["sqlite", "redis"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that choose the job store: none (SQLite) or a flushed Redis."""
    return {"JOB_BROKER_URL": request.getfixturevalue("redis")} if request.param == "redis" else {}


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A job queue and its store on each back end (Redis: flushed), opened in this process."""
    from dataclasses import replace

    from service.config import Settings
    from service.jobs.queue import JobQueue

    settings = Settings(scripts_dir=tmp_path, job_data_dir=tmp_path / "data")
    if request.param == "redis":
        settings = replace(settings, job_broker_url=request.getfixturevalue("redis_url"))
    opened = JobQueue(settings)
    if request.param == "redis":
        opened.huey.storage.conn.flushdb()
    yield opened
    opened.close()


@pytest.fixture
def schedule_store(queue: Any) -> Any:
    """The schedule store of each back end, beside its job queue."""
    from service.schedules.backends import open_store

    return open_store(queue)
