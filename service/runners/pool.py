"""The worker's side of runners: one zygote, warm runners per script, calls under deadlines.

A call takes an idle runner of its script (or has the zygote fork one), sends the request
and reads the runner's messages until its answer, answering `secret()` requests and
handing log lines to the caller on the way. At the deadline, or when `stop()` says so, the
runner's whole process group is killed and the caller gets ScriptTimeout at once: no
thread is left behind, nothing is injected into running code.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from service.runners import protocol
from service.runners.limits import RunnerUser, undumpable

STOP_POLL_SECONDS = 0.2
STACK_SECONDS = 0.05  # how long a deadline waits for the runner to say where it was
ZYGOTE_START_SECONDS = 60.0


class ScriptTimeout(Exception):
    """The script's deadline passed (its import or its call); its runner was killed.
    `remote_traceback` is where the script was (for the log), when the runner could say."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class ScriptStopped(Exception):
    """`stop()` asked for it (a cancelled job); the runner was killed."""


class RunnerFailed(Exception):
    """The script raised (kind `exception`), ran out of memory (`memory`), or its runner
    died (`crashed`: killed by a signal, by the OOM killer). The runner's traceback text is
    kept for the log, never for the client."""

    def __init__(
        self, kind: str, message: str, remote_traceback: str = "", remote_type: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.remote_traceback = remote_traceback
        self.remote_type = remote_type  # the script's exception's type name


class ImportFailed(Exception):
    """The script failed to import or has no handler: `state` and a client-safe `error`."""

    def __init__(self, state: str, error: str, remote_traceback: str = "") -> None:
        super().__init__(error)
        self.state = state
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class RunnerConfig:
    """What runners are started with; nothing secret (it is sent to the zygote)."""

    scripts_dir: str
    log_level: str
    max_body: int
    memory: int  # bytes; a script's MEMORY_LIMIT replaces it
    user: RunnerUser | None
    environ: dict[str, str] = field(default_factory=dict)  # no platform variable in it
    idle_max: int = 64  # warm runners kept per worker, all scripts together
    idle_seconds: float = 300.0


class Hooks:
    """What a call does with a runner's messages before its answer; a pipeline subclass
    writes log lines and reads secrets."""

    def log(self, message: dict[str, Any]) -> None:
        """A log record or an output line of the script."""

    def secret(self, name: str) -> dict[str, Any]:
        return {"error": "no secrets here"}

    def progress(self, message: dict[str, Any]) -> None:
        """The script's `progress(fraction, message)`: a job's, or nobody's."""


class Runner:
    __slots__ = ("idle_since", "key", "memory", "pid", "reader", "sock")

    def __init__(self, pid: int, sock: socket.socket, key: Any, memory: int) -> None:
        self.pid = pid
        self.sock = sock
        self.reader = protocol.Reader(sock)
        self.key = key
        self.memory = memory
        self.idle_since = 0.0


class Zygote:
    """The worker's template process (zygote.py): started on first use, again if it died."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.reader: protocol.Reader | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**self.config.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "service.runners.zygote", str(theirs.fileno())],
            env=env,
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            cwd="/",
        )
        theirs.close()
        c = self.config
        user = c.user
        config = {
            "scripts_dir": c.scripts_dir,
            "log_level": c.log_level,
            "max_body": c.max_body,
            "runner_user": None
            if user is None
            else {"name": user.name, "uid": user.uid, "gid": user.gid},
        }
        ours.sendall(protocol.encode(config))
        ours.settimeout(ZYGOTE_START_SECONDS)
        reader = protocol.Reader(ours)
        ready = reader.message()
        if not isinstance(ready, dict) or ready.get("t") != "ready":
            raise protocol.ProtocolError("the zygote did not start")
        ours.settimeout(None)
        self.sock, self.reader = ours, reader

    def spawn(self, path: str, memory: int) -> tuple[int, socket.socket]:
        with self.lock:
            for attempt in (1, 2):  # a zygote that died is started again, once
                try:
                    if self.sock is None:
                        self._start()
                    assert self.sock is not None
                    self.sock.sendall(
                        protocol.encode({"t": "spawn", "path": path, "memory": memory})
                    )
                    payload, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
                    if not fds:
                        raise protocol.ProtocolError("the zygote sent no runner")
                    reply = protocol.Reader(_Bytes(payload)).message()  # type: ignore[arg-type]
                    assert isinstance(reply, dict)
                    return int(reply["pid"]), socket.socket(fileno=fds[0])
                except (OSError, protocol.ProtocolError):
                    self._close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def warm(self) -> None:
        """Start now, in the background, so the first call finds it ready."""

        def start() -> None:
            with self.lock, contextlib.suppress(OSError, protocol.ProtocolError):
                if self.sock is None:
                    self._start()

        threading.Thread(target=start, name="scriptgate-zygote-start", daemon=True).start()

    def kill(self, pid: int) -> None:
        with self.lock:
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendall(protocol.encode({"t": "kill", "pid": pid}))

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)  # it kills its runners when the socket closes
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        with self.lock:
            self._close()


def _timeout(seconds: float, where: str) -> ScriptTimeout:
    message = f"deadline of {seconds:g} s passed"
    return ScriptTimeout(message, f"{where}ScriptTimeout: {message}" if where else "")


class _Bytes:
    """A received datagram read as if it came from a socket (for protocol.Reader)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        data, self.data = self.data[:size], self.data[size:]
        return data


class RunnerPool:
    """One worker's runners: warm ones by script version, the zygote that forks them."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self.zygote = Zygote(config)
        self._idle: dict[Any, list[Runner]] = {}
        self._count = 0
        self._lock = threading.Lock()
        undumpable()

    # -- runners ---------------------------------------------------------------------
    def start(
        self,
        key: Any,
        path: str,
        memory: int | None,
        seconds: float,
        hooks: Hooks | None = None,
    ) -> tuple[dict, Runner]:
        """A new runner for this script: its description and the runner, kept for a call.
        Raises ImportFailed, ScriptTimeout (its import passed the deadline). `hooks` get
        what the script logs while it is imported."""
        hooks = hooks or Hooks()
        memory = memory or self.config.memory
        try:
            pid, sock = self.zygote.spawn(path, memory)
        except (OSError, protocol.ProtocolError) as exc:  # its call's failure, not a bug's
            raise RunnerFailed("crashed", f"no runner could be started: {exc}") from exc
        runner = Runner(pid, sock, key, memory)
        with self._killed_on_failure(runner, hooks, seconds):
            hello = self._read(runner, time.monotonic() + seconds, None, hooks)
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            self.kill(runner)
            raise RunnerFailed("crashed", "the runner sent no description")
        if "info" not in hello:
            self.kill(runner)
            raise ImportFailed(
                str(hello.get("state", "import_error")),
                str(hello.get("error", "import failed")),
                str(hello.get("traceback", "")),
            )
        return hello["info"], runner

    def take(self, key: Any) -> Runner | None:
        """An idle runner of this script version that is still fit to serve, or None."""
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                runner = idle.pop()
                self._count -= 1
            if self._fit(runner):
                return runner
            self.kill(runner)

    def put_back(self, runner: Runner) -> None:
        now = time.monotonic()
        runner.idle_since = now
        evict: list[Runner] = []
        with self._lock:
            self._idle.setdefault(runner.key, []).append(runner)
            self._count += 1
            if self._count > self.config.idle_max or self._count % 16 == 0:
                evict = self._evict(now)
        for old in evict:
            self.kill(old)

    def _evict(self, now: float) -> list[Runner]:
        """Idle runners past their time, then the longest idle while over the cap."""
        everyone = sorted(
            (r for runners in self._idle.values() for r in runners), key=lambda r: r.idle_since
        )
        gone = [r for r in everyone if now - r.idle_since > self.config.idle_seconds]
        over = len(everyone) - len(gone) - self.config.idle_max
        gone += [r for r in everyone if r not in gone][: max(0, over)]
        for runner in gone:
            self._idle[runner.key].remove(runner)
            self._count -= 1
        return gone

    def discard(self, match: Callable[[Any], bool]) -> None:
        """Kill the idle runners whose key matches (a script that changed)."""
        with self._lock:
            gone = [r for key, rs in self._idle.items() if match(key) for r in rs]
            for key in [k for k in self._idle if match(k)]:
                self._count -= len(self._idle.pop(key))
        for runner in gone:
            self.kill(runner)

    def _fit(self, runner: Runner) -> bool:
        """Nothing waiting from an idle runner but stray output: one that died has closed
        its socket."""
        while True:
            ready, _, _ = select.select([runner.sock], [], [], 0)
            if not ready and not runner.reader.pending():
                return True
            try:
                runner.sock.settimeout(1.0)
                message = runner.reader.message()
            except (OSError, protocol.ProtocolError):
                return False
            if not isinstance(message, dict) or message.get("t") not in (
                "log",
                "output",
                "dropped",
                "progress",
            ):
                return False

    def kill(self, runner: Runner) -> None:
        with contextlib.suppress(OSError):
            runner.sock.close()
        self.zygote.kill(runner.pid)

    def close(self) -> None:
        with self._lock:
            idle = [r for runners in self._idle.values() for r in runners]
            self._idle.clear()
            self._count = 0
        for runner in idle:
            with contextlib.suppress(OSError):
                runner.sock.close()
        self.zygote.close()

    def warm(self) -> None:
        """Have the zygote start in the background (a server's worker, once booted)."""
        self.zygote.warm()

    # -- calls -------------------------------------------------------------------------
    def call(
        self,
        runner: Runner,
        message: dict[str, Any],
        body: bytes,
        seconds: float,
        stop: Callable[[], bool] | None,
        hooks: Hooks,
    ) -> tuple[dict[str, Any], bytes | RunnerStream]:
        """Send one call and read until its answer: (message, response body). The runner
        goes back to the idle pool when it can serve again; else it is killed. A streamed
        answer's body is a RunnerStream, which holds the runner until the stream ends."""
        deadline = time.monotonic() + seconds
        with self._killed_on_failure(runner, hooks, seconds):
            runner.sock.sendall(
                protocol.encode({**message, "t": "call", "body": True})
                + protocol.encode_bytes(body)
            )
            answer = self._read(runner, deadline, stop, hooks)
            if not isinstance(answer, dict):
                raise RunnerFailed("crashed", "the runner answered out of turn")
            if answer.get("t") == protocol.STREAM_HEAD:
                return answer, RunnerStream(self, runner, deadline, seconds, stop, hooks)
            data = b""
            if answer.get("t") == "response":
                chunk = self._read(runner, deadline, stop, hooks)
                if not isinstance(chunk, bytes):
                    raise RunnerFailed("crashed", "the runner sent no body")
                data = chunk
        if answer.get("retire"):  # worn out (memory, descriptors, threads): it exits now
            self.kill(runner)
        else:
            self.put_back(runner)
        return answer, data

    @contextlib.contextmanager
    def _killed_on_failure(self, runner: Runner, hooks: Hooks, seconds: float) -> Iterator[None]:
        """However a call or an import ends early, its runner is killed; at the deadline,
        after asking it where the script was."""
        try:
            yield
        except ScriptTimeout:
            where = self._where(runner, hooks)
            self.kill(runner)
            raise _timeout(seconds, where) from None
        except BaseException:
            self.kill(runner)
            raise

    def _where(self, runner: Runner, hooks: Hooks) -> str:
        """Ask a runner past its deadline where its script is (SIGUSR1: it sends its main
        thread's stack); '' when it cannot say in time (stuck in C code)."""
        try:
            os.kill(runner.pid, signal.SIGUSR1)
        except OSError:
            return ""
        deadline = time.monotonic() + STACK_SECONDS
        while True:
            try:
                message = self._read(runner, deadline, None, hooks)
            except (ScriptTimeout, RunnerFailed, OSError):
                return ""
            if isinstance(message, dict) and message.get("t") == "stack":
                return "Traceback (most recent call last):\n" + str(message.get("stack", ""))

    def _read(
        self, runner: Runner, deadline: float, stop: Callable[[], bool] | None, hooks: Hooks
    ) -> dict[str, Any] | bytes:
        """The next message that is not a log line or a secret request."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ScriptTimeout("the deadline passed")
            wait = min(remaining, STOP_POLL_SECONDS) if stop is not None else remaining
            runner.sock.settimeout(wait)
            try:
                message = runner.reader.message()
            except TimeoutError:
                if stop is not None and stop():
                    raise ScriptStopped("stopped on request") from None
                continue
            except (OSError, protocol.ProtocolError):
                raise RunnerFailed("crashed", "the runner died") from None
            if isinstance(message, bytes):
                return message
            kind = message.get("t")
            if kind in ("log", "output", "dropped"):
                hooks.log(message)
            elif kind == "progress":
                hooks.progress(message)
            elif kind == "secret":
                reply = hooks.secret(str(message.get("name", "")))
                runner.sock.sendall(protocol.encode({"t": "secret", **reply}))
            else:
                return message


class RunnerStream:
    """A streamed answer's chunks, read from its runner as the caller's server sends
    them, under the call's deadline: the whole stream is within the script's timeout.

    It ends at the runner's `end`, at the deadline (the runner is killed: `failure` is a
    ScriptTimeout), when the runner dies or the script's generator raised (`failure` is
    a RunnerFailed), or at `close()` before its end (the client went away: the runner is
    killed). `close()` then runs the callbacks the pipeline added (its log line, span,
    metrics), once.
    """

    def __init__(
        self,
        pool: RunnerPool,
        runner: Runner,
        deadline: float,
        seconds: float,
        stop: Callable[[], bool] | None,
        hooks: Hooks,
    ) -> None:
        self.pool = pool
        self.runner: Runner | None = runner
        self.deadline = deadline
        self.seconds = seconds
        self.stop = stop
        self.hooks = hooks
        self.failure: BaseException | None = None
        self.stopped = False  # `stop()` ended it (a cancelled job)
        self.sent = 0  # bytes handed on
        self.cut_short = False  # closed before its end: the client went away
        self._callbacks: list[Callable[[RunnerStream], None]] = []
        self._closed = False

    def on_close(self, callback: Callable[[RunnerStream], None]) -> None:
        """Run at close, in the order added: the innermost layer (the call) adds first,
        as nested `finally` blocks would run."""
        self._callbacks.append(callback)

    def __iter__(self) -> RunnerStream:
        return self

    def __next__(self) -> bytes:
        runner = self.runner
        if runner is None:
            raise StopIteration
        while True:
            try:
                message = self.pool._read(runner, self.deadline, self.stop, self.hooks)
            except ScriptTimeout:
                where = self.pool._where(runner, self.hooks)
                self._end(kill=True, failure=_timeout(self.seconds, where))
                raise StopIteration from None
            except ScriptStopped as exc:
                self.stopped = True
                self._end(kill=True, failure=exc)
                raise StopIteration from None
            except RunnerFailed as exc:
                self._end(kill=True, failure=exc)
                raise StopIteration from None
            if isinstance(message, bytes):
                if message:
                    self.sent += len(message)
                    return message
                continue
            if message.get("t") != protocol.STREAM_END:
                failure = RunnerFailed("crashed", "the runner sent something else mid-stream")
                self._end(kill=True, failure=failure)
                raise StopIteration
            failed = message.get("failed")
            if isinstance(failed, dict):
                self.failure = RunnerFailed(
                    "memory" if failed.get("kind") == "memory" else "exception",
                    str(failed.get("message", "")),
                    str(failed.get("traceback", "")),
                    str(failed.get("type", "Exception")),
                )
            self._end(kill=bool(message.get("retire")), failure=self.failure)
            raise StopIteration

    def _end(self, *, kill: bool, failure: BaseException | None) -> None:
        runner, self.runner = self.runner, None
        self.failure = failure
        if runner is None:
            return
        if kill:
            self.pool.kill(runner)
        else:
            self.pool.put_back(runner)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.runner is not None:  # the reader stopped early: the script is stopped too
            self.cut_short = True
            self._end(kill=True, failure=self.failure)
        error: Exception | None = None
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception as exc:  # the others still run (a slot, a gauge)
                error = error or exc
        if error is not None:
            raise error
