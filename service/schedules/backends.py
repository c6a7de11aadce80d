"""The schedule store of a job queue: SQLite or Redis, as its job store is."""

from __future__ import annotations

from service.schedules.store import ScheduleStore

_OPENED: dict[int, tuple[object, ScheduleStore]] = {}  # id(huey storage) -> store


def open_store(jobs: object) -> ScheduleStore:
    """The schedule store beside a JobQueue's job store (same file or database), made
    once per huey storage (a JobQueue opens one per process)."""
    from service.jobs.queue import JobQueue

    assert isinstance(jobs, JobQueue)
    storage = jobs.huey.storage
    held = _OPENED.get(id(storage))
    if held is not None and held[0] is storage:
        return held[1]
    made: ScheduleStore
    if jobs.settings.job_broker_url is None:
        from service.schedules.sqlite_state import SqliteScheduleStore

        made = SqliteScheduleStore(storage)
    else:
        from service.schedules.redis_state import RedisScheduleStore

        made = RedisScheduleStore(storage.conn)
    _OPENED[id(storage)] = (storage, made)
    return made
