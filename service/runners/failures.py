"""How a runner's work ends other than with an answer: what a call or an import raises.

Shared by the pool (pool.py), a streamed answer (stream.py) and the callers above them
(the pipeline, jobs, listings), none of which needs the pool to name a failure.
"""

from __future__ import annotations


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


def timed_out(seconds: float, where: str) -> ScriptTimeout:
    message = f"deadline of {seconds:g} s passed"
    return ScriptTimeout(message, f"{where}ScriptTimeout: {message}" if where else "")
