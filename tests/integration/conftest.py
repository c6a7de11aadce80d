"""Fixtures the integration tests share: a real redis-server per module, and the job store
a test runs against (each test parametrized over SQLite and a flushed Redis)."""

from __future__ import annotations

from collections.abc import Iterator

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
