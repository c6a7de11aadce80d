"""A long report, sped up: reads rows, says how far it got, and logs as it goes.

Run it as a job and follow it live: GET /_platform/jobs/<id>/events streams its state,
its progress and its log lines as they happen; /logs has the lines afterwards.
"""

import logging
import time

from scriptgate import progress

ASYNC = True
ROWS = 3

log = logging.getLogger(__name__)


def main(request):
    log.info("reading %d rows", ROWS)
    for n in range(1, ROWS + 1):
        time.sleep(0.2)  # a slow query, in a real report
        progress(n / ROWS, f"{n} of {ROWS} rows")
    log.info("report ready")
    return {"rows": ROWS}
