"""Wait 2 s as a database call would, then answer (the mixed workload's slow call).

time.sleep releases the GIL and holds no CPU, like a socket read: what the call costs a
server is the worker (sync) or the thread (gthread) it keeps busy meanwhile.
"""

import time

WAIT_SECONDS = 2.0


def main(request):
    time.sleep(WAIT_SECONDS)
    return {"waited_s": WAIT_SECONDS}
