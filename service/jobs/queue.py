"""The job queue: huey (SqliteHuey by default, RedisHuey with JOB_BROKER_URL) and the
job store beside it, opened once per process.

huey carries only a job id per task; what the job asks for and its result live in the
job store. Messages are JSON rather than huey's default pickle, so whoever can write to
the queue cannot make a job worker run code of their choosing.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from huey import RedisHuey, SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer
from huey.storage import SqliteStorage

from service.config import ConfigError, Settings
from service.jobs.doorbell import queue_bell, ring
from service.jobs.metrics import JobMetrics, QueueCollector
from service.jobs.redis_store import RedisJobStore
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import Job, JobStore, StoreError
from service.small import PerProcess

if TYPE_CHECKING:
    from service.observability.metrics import Metrics

QUEUE_NAME = "scriptgate"
TASK_NAME = "run_job"
DATABASE = "jobs.db"
# Redis: give up connecting after 2 s (a scrape or a call must not hang on a dead
# broker); reads wait longer than the job workers' 1 s blocking pop.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0


ETA = Message._fields.index("eta")


class JsonSerializer(Serializer):  # type: ignore[misc]
    """huey's messages as JSON: our tasks carry a job id and nothing else, and a retry
    the time it may run (`eta`, a naive UTC datetime, as ISO 8601 text)."""

    def _serialize(self, data: Any) -> bytes:
        fields = list(data)
        if isinstance(fields[ETA], datetime.datetime):
            fields[ETA] = fields[ETA].isoformat()
        return json.dumps(fields).encode("utf-8")

    def _deserialize(self, data: bytes) -> Any:
        fields = json.loads(data)
        if isinstance(fields[ETA], str):
            fields[ETA] = datetime.datetime.fromisoformat(fields[ETA])
        return Message(*fields)


class _SqliteStorage(SqliteStorage):  # type: ignore[misc]
    """huey's SQLite storage with `synchronous=NORMAL`, which huey cannot ask for (its
    `fsync` is FULL or OFF). In WAL mode a crash or restart of any process loses nothing;
    an OS crash or power cut can lose the last moments, as Redis's default
    `appendfsync everysec` can. It spares each commit a disk flush: 10x the jobs per
    second here (bench/jobs.py)."""

    def _create_connection(self) -> Any:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=1")
        return conn


def build_huey(settings: Settings) -> Any:
    """SqliteHuey under JOB_DATA_DIR, or RedisHuey on JOB_BROKER_URL."""
    common = {"results": False, "serializer": JsonSerializer()}
    if settings.job_broker_url is None:
        settings.job_data_dir.mkdir(parents=True, exist_ok=True)
        filename = str(settings.job_data_dir / DATABASE)
        return SqliteHuey(QUEUE_NAME, filename=filename, storage_class=_SqliteStorage, **common)
    from redis import ConnectionPool

    pool = ConnectionPool.from_url(
        settings.job_broker_url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=READ_TIMEOUT,
    )
    return RedisHuey(QUEUE_NAME, connection_pool=pool, **common)


class _Opened(NamedTuple):
    """One process's connections: huey, the job store over its storage, the task."""

    huey: Any
    store: JobStore
    task: Any


class JobQueue:
    """One per app: the queue and the store, opened on first use in each process.

    Lazy so that a process that never touches a job never opens the database, and
    per process (checked by pid) so that no connection crosses a fork.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._metrics = metrics
        self._job_metrics: JobMetrics | None = None
        if metrics is not None:
            metrics.register_live(QueueCollector(self))
        self._lock = threading.Lock()
        self._opened: PerProcess[_Opened] = PerProcess(self._open)
        self._execute: Callable[[str], None] | None = None
        self._bell = queue_bell(settings)

    def _open(self) -> _Opened:
        huey = build_huey(self.settings)
        storage = huey.storage
        store = (
            SqliteJobStore(storage)
            if self.settings.job_broker_url is None
            else RedisJobStore(storage.conn, self.settings.job_retention)
        )
        return _Opened(huey, store, huey.task(name=TASK_NAME)(self._run))

    @property
    def huey(self) -> Any:
        return self._opened.get().huey

    @property
    def store(self) -> JobStore:
        return self._opened.get().store

    @property
    def metrics(self) -> JobMetrics | None:
        """The job counters and histograms, built on first use (None: METRICS=off)."""
        if self._job_metrics is None and self._metrics is not None:
            with self._lock:
                if self._job_metrics is None:
                    self._job_metrics = JobMetrics(self._metrics)
        return self._job_metrics

    def submit(self, job: Job, request: bytes, delay: float = 0.0) -> Job | None:
        """Record the job, then queue its id (to run `delay` seconds from now: huey's
        schedule, see release_due); a failure leaves neither (StoreError). Returns the
        caller's earlier job instead when it holds the same idempotency key."""
        try:
            held = self.store.create(job, request, job.created_at)
        except Exception as exc:
            raise StoreError(str(exc)) from exc
        if held is not None:
            return held
        try:
            run = self._opened.get().task
            task = run.s(job.id, delay=delay) if delay > 0 else run.s(job.id)
            self.huey.enqueue(task)
        except Exception as exc:
            self.store.delete(job.id)
            raise StoreError(str(exc)) from exc
        if self._bell is not None and delay <= 0:
            ring(self._bell)
        return None

    def release_due(self) -> int:
        """Queue the delayed jobs (retries) whose time has come: what huey's own
        Scheduler thread does, which job workers do not run. Several workers may ask at
        once; a job id queued twice still runs once (the store's claim)."""
        due = self.huey.read_schedule()
        for task in due:
            self.huey.enqueue(task)
        return len(due)

    def serve(self, execute: Callable[[str], None]) -> None:
        """In a job worker: what to do with each job id taken off the queue."""
        self._execute = execute

    def _run(self, job_id: str) -> None:
        if self._execute is None:
            raise RuntimeError("this process does not run jobs")
        self._execute(job_id)

    def close(self) -> None:
        """Drop this process's connections (the master, before it forks)."""
        opened = self._opened.peek()
        if opened is None:
            return
        if self.settings.job_broker_url is None:
            opened.huey.storage.close()
        else:
            opened.huey.storage.pool.disconnect()
        self._opened.forget()


def check_store(settings: Settings) -> None:
    """Open the store once at startup: a bad data folder or an unreachable broker stops
    the server with one line naming the variable, before anything is forked."""
    queue = JobQueue(settings)
    variable = "JOB_DATA_DIR" if settings.job_broker_url is None else "JOB_BROKER_URL"
    try:
        queue.store.stats()
    except Exception as exc:  # sqlite3, OSError, redis: each says what went wrong
        raise ConfigError(variable, f"cannot open the job store: {exc}") from None
    finally:
        queue.close()
