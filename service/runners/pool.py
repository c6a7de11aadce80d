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
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from service.runners import protocol
from service.runners.failures import (
    ImportFailed,
    RunnerFailed,
    ScriptStopped,
    ScriptTimeout,
    timed_out,
)
from service.runners.limits import undumpable
from service.runners.spawner import RunnerConfig, Zygote
from service.runners.stream import RunnerStream

STOP_POLL_SECONDS = 0.2
STACK_SECONDS = 0.05  # how long a deadline waits for the runner to say where it was


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
            hello = self.read(runner, time.monotonic() + seconds, None, hooks)
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
            answer = self.read(runner, deadline, stop, hooks)
            if not isinstance(answer, dict):
                raise RunnerFailed("crashed", "the runner answered out of turn")
            if answer.get("t") == protocol.STREAM_HEAD:
                return answer, RunnerStream(self, runner, deadline, seconds, stop, hooks)
            data = b""
            if answer.get("t") == "response":
                chunk = self.read(runner, deadline, stop, hooks)
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
            where = self.where(runner, hooks)
            self.kill(runner)
            raise timed_out(seconds, where) from None
        except BaseException:
            self.kill(runner)
            raise

    def where(self, runner: Runner, hooks: Hooks) -> str:
        """Ask a runner past its deadline where its script is (SIGUSR1: it sends its main
        thread's stack); '' when it cannot say in time (stuck in C code)."""
        try:
            os.kill(runner.pid, signal.SIGUSR1)
        except OSError:
            return ""
        deadline = time.monotonic() + STACK_SECONDS
        while True:
            try:
                message = self.read(runner, deadline, None, hooks)
            except (ScriptTimeout, RunnerFailed, OSError):
                return ""
            if isinstance(message, dict) and message.get("t") == "stack":
                return "Traceback (most recent call last):\n" + str(message.get("stack", ""))

    def read(
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
