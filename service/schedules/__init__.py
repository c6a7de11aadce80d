"""Schedules: a script that declares `SCHEDULE = "0 7 * * 1-5"` runs itself as a job.

spec.py reads a script's SCHEDULE_* attributes (in its runner, at import), clock.py is
the time the scheduler goes by, store.py and its SQLite and Redis parts hold each
schedule's state and the claims that make a scheduled time run once per cluster (and
are taken over when their scheduler dies), scheduler.py is the loop, runs.py creates a
time's job once, process.py is the scheduler's process (forked by the job supervisor)
and faults.py the fault point tests kill it at, http.py the
/_platform/schedules views, metrics.py and api_doc.py what operators and the API
document see.
"""
