"""How a failed import is remembered: a broken script is not imported again on every
listing, and one whose import keeps timing out is backed off (calls get 503 at once)
for a time that doubles with each timeout, until its file changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.scripts.loader import Stamp

# Listings (health, routes, the API document) retry a failed import of an unchanged file
# after this long: a package installed since then is found without touching the script.
FAILURE_RECHECK_SECONDS = 30.0
BACKOFF_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 600.0


class BackedOff(Exception):
    """The script's import kept timing out; it is not tried again before `retry_after`."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"import timed out; tried again in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class Failure:
    """How the last import of a script failed, and how many timed out in a row."""

    stamp: Stamp | None
    at: float
    error: BaseException
    timeouts: int = 0  # in a row, for the back-off

    def backoff(self) -> float:
        if not self.timeouts:
            return 0.0
        return min(BACKOFF_SECONDS * 2 ** (self.timeouts - 1), MAX_BACKOFF_SECONDS)
