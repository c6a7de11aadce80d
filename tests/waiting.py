"""Waiting for a condition, bounded in time: never a bare sleep in place of the condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], seconds: float = 10.0, what: str = "the condition") -> T:
    """Call `check` until it returns something true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {seconds:g} s (last: {value!r})")
        time.sleep(0.02)
