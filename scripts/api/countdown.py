"""A streamed answer: each line reaches the caller as the generator yields it.

A script may return a generator (or a streaming Response, or Server-Sent Events with
mimetype="text/event-stream"); its TIMEOUT covers the whole stream.
"""

import time


def main(request, n: int = 3):
    """Count down from n, a line every 0.1 s.

    Args:
        n: where to start (at most 10).
    """

    def lines():
        for left in range(min(n, 10), 0, -1):
            yield f"{left}\n"
            time.sleep(0.1)
        yield "liftoff\n"

    return lines()
