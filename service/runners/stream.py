"""A streamed answer (a generator, an SSE response) read from its runner chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from service.runners import protocol
from service.runners.failures import RunnerFailed, ScriptStopped, ScriptTimeout, timed_out

if TYPE_CHECKING:
    from service.runners.pool import Hooks, Runner, RunnerPool


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
                message = self.pool.read(runner, self.deadline, self.stop, self.hooks)
            except ScriptTimeout:
                where = self.pool.where(runner, self.hooks)
                self._end(kill=True, failure=timed_out(self.seconds, where))
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
