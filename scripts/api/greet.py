"""Greet someone: typed query parameters, checked before the script runs.

`?name=Rico&times=2` arrives as `name="Rico"`, `times=2`; `?times=lots` is answered 400
with the field at fault, and the script never runs. Its log lines carry the request's
trace id.
"""

import logging
from typing import Annotated

METHODS = ["GET"]

log = logging.getLogger(__name__)


def main(
    request,
    name: Annotated[str, "who to greet"] = "Guest",
    times: Annotated[int, "how many greetings"] = 1,
    shout: bool = False,
):
    greeting = f"Hello, {name}!"
    if shout:
        greeting = greeting.upper()
    log.info("greeting %s %d times", name, times)
    return {"message": " ".join([greeting] * times)}
