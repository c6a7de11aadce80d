"""The fault point tests use to kill or stop the scheduler at the worst moment.

SCHEDULE_TEST_FAULT (tests only, config.py) names a file; while none is there nothing
happens. A test writes `<kill|stop> <claim|job>` into it: the next scheduler to pass
that point (right after claiming a time; right after creating its job, before the
outcome) removes the file, so it strikes once, and sends itself SIGKILL (a crash: the
supervisor starts a new scheduler) or SIGSTOP (a scheduler that is slow, not dead,
until the test sends SIGCONT).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def fault_point(fault_file: Path | None, point: str) -> None:
    """Kill or stop this process here when SCHEDULE_TEST_FAULT asks for it, once."""
    if fault_file is None:
        return
    try:
        words = fault_file.read_text().split()
    except OSError:
        return
    if len(words) != 2 or words[1] != point or words[0] not in FAULT_SIGNALS:
        return
    try:
        fault_file.unlink()  # of two schedulers here at once, the one that removes it
    except OSError:
        return
    os.kill(os.getpid(), FAULT_SIGNALS[words[0]])
