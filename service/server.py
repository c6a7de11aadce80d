"""`scriptgate serve`: gunicorn, configured from one Settings object handed over in memory.

The master prepares the shared folders (metrics, concurrency slots), then gunicorn forks
the workers, each of which builds its own app (tracer threads and log descriptors must
belong to the process that uses them). No value travels through environment variables
except PROMETHEUS_MULTIPROC_DIR, which is prometheus_client's own interface.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from service import processes
from service.access.guard import closed_zone_warnings
from service.config import ConfigError, Settings
from service.observability import multiproc
from service.observability.logs import open_append
from service.platform import plane
from service.runners import exposure
from service.runners.limits import RunnerUser

# gunicorn halts the whole server when a worker exits with 3 (boot error) or 4 (app load
# error); a script calling os._exit(3) must only cost its own worker.
_HALTING_EXIT_CODES = (3, 4)
WORKER_NICENESS = 5


class ScriptgateServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with the platform's configuration and hooks."""

    def __init__(self, settings: Settings, run_dir: Path, metrics_dir: Any) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.metrics_dir = metrics_dir
        self.started_at = time.time()
        # The master's helper processes: the platform plane, the job supervisor.
        self.helpers: list[processes.Supervisor] = []
        self.plane_socket = (
            processes.bind(settings.platform_bind) if settings.platform_bind else None
        )
        super().__init__()

    def gunicorn_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bind": [s.bind],
            "workers": s.workers,
            "worker_class": s.worker_class,
            # gunicorn turns `sync` into gthread when threads > 1: sync means one call
            # per process, so it gets one thread.
            "threads": s.threads if s.worker_class == "gthread" else 1,
            # A worker accepts no more connections than it has threads, so a call never
            # queues behind busy threads while another worker is idle; connections close
            # after each response (as under the sync worker), or an idle kept-alive one
            # would hold a slot.
            "worker_connections": s.threads,
            # Above every script deadline: gunicorn only steps in for a frozen worker.
            "timeout": s.worker_timeout,
            # A stopping or recycled worker answers every call it holds first.
            "graceful_timeout": int(s.max_script_timeout + 5),
            "keepalive": 0,
            "max_requests": s.max_requests,
            "max_requests_jitter": s.max_requests_jitter,
            # No files in the user's home or the working tree: no pid file, no control
            # socket, and the heartbeat files in memory.
            "pidfile": None,
            "control_socket_disable": True,
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            "accesslog": None,  # the platform writes its own JSON request log line
            "errorlog": "-",
            "loglevel": s.server_log_level,
            "proc_name": "scriptgate",
            # The platform reads X-Forwarded-For itself, from TRUSTED_PROXIES only.
            "forwarded_allow_ips": "",
            "post_fork": self.post_fork,
            "post_worker_init": self.post_worker_init,
            "worker_exit": self.worker_exit,
            "child_exit": self.child_exit,
            "when_ready": self.when_ready,
            "on_exit": self.on_exit,
        }

    def load_config(self) -> None:
        for key, value in self.gunicorn_options().items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from service.app import create_app

        return create_app(self.settings, run_dir=self.run_dir, started_at=self.started_at)

    # gunicorn hooks: (server, worker) signatures are gunicorn's.
    def post_fork(self, server: Any, worker: Any) -> None:
        # Runners are the workers' grandchildren and inherit this: when scripts spin on
        # every core, the master and the platform plane still get the CPU first.
        os.nice(WORKER_NICENESS)
        real_exit = os._exit

        def _exit(code: int) -> None:
            real_exit(1 if code in _HALTING_EXIT_CODES else code)

        os._exit = _exit  # type: ignore[assignment]

    def post_worker_init(self, worker: Any) -> None:
        """The app is loaded: its zygote starts now, not on the first call (~0.4 s)."""
        worker.wsgi.extensions["scriptgate"].runners.warm()

    def worker_exit(self, server: Any, worker: Any) -> None:
        app = getattr(worker, "wsgi", None)
        extensions = getattr(app, "extensions", {})
        if "scriptgate" in extensions:
            rt = extensions["scriptgate"]
            rt.runners.close()  # its zygote and runners go with it, not after
            rt.tracer_provider.force_flush(2000)

    def child_exit(self, server: Any, worker: Any) -> None:
        if self.metrics_dir is not None:
            multiproc.worker_exited(worker.pid, self.metrics_dir.path)

    def when_ready(self, server: Any) -> None:
        s = self.settings
        listeners = server.LISTENERS
        if s.job_workers:
            from service.jobs import worker as jobs

            self.helpers.append(
                processes.Supervisor(
                    "job supervisor",
                    lambda: jobs.start(self, listeners),
                    server.log,
                    jobs.STOP_SECONDS,
                )
            )
        if self.plane_socket is not None:  # kept open here, for a restarted plane
            self.helpers.append(
                processes.Supervisor(
                    "platform plane", lambda: plane.start(self, listeners), server.log, 5.0
                )
            )
        plane_note = f", platform plane on http://{s.platform_bind}" if s.platform_bind else ""
        print(
            f"Scriptgate listening on http://{s.bind} ({s.workers} workers x "
            f"{server.cfg.threads} threads, {s.worker_class}){plane_note}",
            file=sys.stderr,
            flush=True,
        )
        for warning in closed_zone_warnings(s) + runner_warnings(s):
            print(warning, file=sys.stderr, flush=True)

    def supervise(self) -> None:
        """Called by the master on every loop turn (see _Arbiter)."""
        for helper in self.helpers:
            dead = helper.check()
            if dead is not None and self.metrics_dir is not None:
                multiproc.worker_exited(dead, self.metrics_dir.path)

    def on_exit(self, server: Any) -> None:
        for helper in self.helpers:  # the job supervisor first: its jobs end cleanly
            helper.stop()
            if self.metrics_dir is not None:
                multiproc.worker_exited(helper.pid, self.metrics_dir.path)
        self.cleanup()

    def run(self) -> None:
        _Arbiter(self).run()

    def cleanup(self) -> None:
        remove_folders(self.run_dir, self.metrics_dir)


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, which also keeps the platform plane alive: gunicorn has no hook
    on its loop, and its manage_workers runs on every turn (at least once a second)."""

    def manage_workers(self) -> None:
        super().manage_workers()
        self.app.supervise()


def prepare(settings: Settings) -> tuple[Settings, multiproc.MetricsDir | None]:
    """The master's shared state before anything forks: the metrics directory, and the
    job store opened once (a bad JOB_DATA_DIR or JOB_BROKER_URL stops startup here).

    From here on the platform's own files (logs, the job store, metrics, slots) are
    private to its user, so a runner user cannot read them; runners set their own umask
    (zygote.py)."""
    os.umask(0o077)
    metrics_dir = None
    if settings.metrics_enabled:
        try:
            metrics_dir = multiproc.MetricsDir.prepare(settings.multiproc_dir)
        except multiproc.DirectoryInUse as exc:
            raise ConfigError("PROMETHEUS_MULTIPROC_DIR", str(exc).partition(": ")[2]) from None
        except OSError as exc:
            raise ConfigError("PROMETHEUS_MULTIPROC_DIR", str(exc)) from None
        settings = replace(settings, multiproc_dir=metrics_dir.path)
    # Only now: these imports load prometheus_client, which reads the directory once.
    from service.jobs.queue import check_store

    try:
        check_store(settings)
    except ConfigError:
        if metrics_dir is not None:
            metrics_dir.cleanup()
        raise
    return settings, metrics_dir


def serve(settings: Settings) -> int:
    """Prepare the shared folders, run gunicorn until it stops, then remove them."""
    processes.bind(settings.bind, "BIND").close()  # a taken port: one line, not five retries
    check_log_file(settings.log_file)
    settings, metrics_dir = prepare(settings)
    run_dir = Path(tempfile.mkdtemp(prefix="scriptgate-run-"))
    master = os.getpid()
    try:  # however the start fails, the folders made for it go
        # Imported once in the master, now that PROMETHEUS_MULTIPROC_DIR is set, so every
        # forked worker starts with it loaded (about half a second of CPU per worker).
        import service.app  # noqa: F401

        ScriptgateServer(settings, run_dir, metrics_dir).run()
    finally:
        # Workers leave through here too (gunicorn exits them with SystemExit): only
        # the master owns the folders.
        if os.getpid() == master:
            remove_folders(run_dir, metrics_dir)
    return 0


def runner_warnings(s: Settings) -> list[str]:
    """What the runner user can and cannot read (service/runners/exposure.py)."""
    user = RunnerUser.lookup(s.runner_user) if s.runner_user else None
    private = [
        ("KEYS_FILE", s.keys_file),
        ("SECRETS_DIR", s.secrets_dir),
        ("JOB_DATA_DIR", s.job_data_dir),
        ("LOG_FILE", s.log_file),
    ]
    return exposure.warnings(user, os.geteuid() == 0, s.scripts_dir, private)


def check_log_file(path: Path | None) -> None:
    """A LOG_FILE the workers could not open stops startup here, in one line, instead
    of a traceback from every worker that tries."""
    if path is None:
        return
    try:
        os.close(open_append(path))
    except OSError as exc:
        raise ConfigError("LOG_FILE", f"cannot write {str(path)!r}: {exc.strerror}") from None


def remove_folders(run_dir: Path, metrics_dir: Any) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    if metrics_dir is not None:
        metrics_dir.cleanup()
