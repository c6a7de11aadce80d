"""Wait alongside other calls until the benchmark releases them (the holding test).

Each call leaves a file in $BENCH_GATHER_DIR while it waits, so the benchmark can count
how many calls the server holds at once and measure its memory meanwhile. A call
returns once the file `release` appears there, or after MAX_WAIT_SECONDS whatever
happens, and answers how many calls were waiting when it left.
"""

import os
import time
import uuid
from pathlib import Path

MAX_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.02
RELEASE = "release"


def main(request):
    folder = Path(os.environ["BENCH_GATHER_DIR"])
    mark = folder / f"{os.getpid()}-{uuid.uuid4().hex}"
    mark.touch()
    try:
        give_up = time.monotonic() + MAX_WAIT_SECONDS
        while not (folder / RELEASE).exists() and time.monotonic() < give_up:
            time.sleep(POLL_SECONDS)
        return {"waiting_with": sum(1 for p in folder.iterdir() if p.name != RELEASE)}
    finally:
        mark.unlink()
