"""What keys have used, shared by every worker of a server: rate limits and last use.

Rate limits are `limits` (Flask-Limiter's core) with its moving-window strategy, which
is exact: never more than N calls in any window of T, not N at the end of one window
and N more at the start of the next. Its storages are per process (memory) or
external servers (Redis, Memcached, MongoDB). gunicorn's workers are processes, so a
limit in memory would allow N per worker. Without `REDIS_URL`, `SqliteStorage` below
is a `limits` storage on one SQLite file in the server's run directory: SQLite's own
locking makes each check-and-take one transaction across processes, with no server to
run (a flock'd counter file would need the same transaction logic written by hand).
With `REDIS_URL`, limits' own RedisStorage (an atomic Lua script) makes the count exact
across replicas, and last use is kept there too.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from limits import RateLimitItem, parse
from limits.storage import MovingWindowSupport, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

BUSY_SECONDS = 5.0  # the longest a call waits for another process's transaction
REDIS_TIMEOUT_SECONDS = 1.0  # a store that does not answer refuses the call (503)
LAST_USE_EVERY_SECONDS = 1.0  # last use is written at most this often per key per worker
REDIS_PREFIX = "scriptgate"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hits_key_at ON hits (key, at);
CREATE TABLE IF NOT EXISTS last_use (id TEXT PRIMARY KEY, at REAL NOT NULL);
"""


class SqliteStorage(Storage, MovingWindowSupport):
    """A `limits` storage for the moving window, on one SQLite file shared by processes.

    One connection per process (a connection must not cross a fork), used by one thread
    at a time; other processes wait on SQLite's lock for up to BUSY_SECONDS.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(None)
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    def _connection(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            # WAL: readers never wait for the writer; nothing here must survive a crash
            # of the machine, so no fsync per call.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(_SCHEMA)
            self._db, self._pid = db, os.getpid()
        return self._db

    def _transaction(self, body: Any) -> Any:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: check and take as one
            try:
                result = body(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = time.time()

        def take(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM hits WHERE key = ? AND at < ?", (key, now - expiry))
            (count,) = db.execute("SELECT count(*) FROM hits WHERE key = ?", (key,)).fetchone()
            if count + amount > limit:
                return False
            db.executemany("INSERT INTO hits (key, at) VALUES (?, ?)", [(key, now)] * amount)
            return True

        return amount <= limit and bool(self._transaction(take))

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT min(at), count(*) FROM hits WHERE key = ? AND at >= ?",
                    (key, now - expiry),
                )
                .fetchone()
            )
        return (row[0], row[1]) if row[1] else (now, 0)

    def touch(self, key_id: str, at: float) -> None:
        self._transaction(
            lambda db: db.execute(
                "INSERT INTO last_use (id, at) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET at = max(at, excluded.at)",
                (key_id, at),
            )
        )

    def last_uses(self) -> dict[str, float]:
        with self._lock:
            return dict(self._connection().execute("SELECT id, at FROM last_use").fetchall())

    # The rest of limits' Storage interface serves the fixed-window strategy, unused here.
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("only the moving window is kept in SQLite")

    def get(self, key: str) -> int:
        return self.get_moving_window(key, 0, 0)[1]

    def get_expiry(self, key: str) -> float:
        raise NotImplementedError("only the moving window is kept in SQLite")

    def check(self) -> bool:
        with self._lock:
            self._connection().execute("SELECT 1").fetchone()
        return True

    def reset(self) -> int | None:
        self._transaction(lambda db: db.execute("DELETE FROM hits"))
        return None

    def clear(self, key: str) -> None:
        self._transaction(lambda db: db.execute("DELETE FROM hits WHERE key = ?", (key,)))


class Usage:
    """Rate limits and last use of keys, in the store all workers (or replicas) share."""

    def __init__(self, sqlite_path: Path, redis_url: str | None = None) -> None:
        self._sqlite: SqliteStorage | None = None
        self._redis: Any = None
        storage: Storage
        if redis_url is None:
            storage = self._sqlite = SqliteStorage(sqlite_path)
        else:
            storage = RedisStorage(
                redis_url,
                key_prefix=f"{REDIS_PREFIX}:limits",
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            self._redis = storage.get_connection()
        self.limiter = MovingWindowRateLimiter(storage)
        self._items: dict[str, RateLimitItem] = {}
        self._touched: dict[str, float] = {}

    def hit(self, key_id: str, rate_limit: str) -> int | None:
        """Take one call from the key's limit: None if allowed, else seconds to wait.

        Raises the store's own error when it does not answer; the caller fails closed.
        """
        item = self._items.get(rate_limit)
        if item is None:
            item = self._items[rate_limit] = parse(rate_limit)
        if self.limiter.hit(item, key_id):
            return None
        reset = self.limiter.get_window_stats(item, key_id).reset_time
        return max(1, math.ceil(reset - time.time()))

    def touch(self, key_id: str) -> None:
        """Remember that the key was used now (written at most once a second per worker)."""
        now = time.time()
        if now - self._touched.get(key_id, 0.0) < LAST_USE_EVERY_SECONDS:
            return
        self._touched[key_id] = now
        if self._sqlite is not None:
            self._sqlite.touch(key_id, now)
        else:
            self._redis.hset(f"{REDIS_PREFIX}:last_use", key_id, repr(now))

    def last_uses(self) -> dict[str, float]:
        if self._sqlite is not None:
            return self._sqlite.last_uses()
        raw = self._redis.hgetall(f"{REDIS_PREFIX}:last_use")
        return {_text(k): float(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
