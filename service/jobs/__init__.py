"""Long-running scripts as jobs: `Prefer: respond-async` (or `ASYNC = True`) queues a
call instead of running it, and job worker processes run it later.

  http.py          the hand-off from the pipeline (202), /_platform/jobs/<id>[/result]
  snapshot.py      the request, frozen at the hand-off and rebuilt in the job worker
  queue.py         huey (SQLite by default, Redis with JOB_BROKER_URL) and the job store
  store.py         a job's record and what a store must do; sqlite_store.py, redis_store.py
  execute.py       one job in a job worker: the synchronous call's stages, cancellable
  worker.py        the supervisor and its job worker processes
  command.py       `scriptgate jobs`: job workers alone, apart from the HTTP servers
  metrics.py       job counters and histograms; the queue's depth at scrape time
"""
