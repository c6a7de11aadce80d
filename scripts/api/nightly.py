"""A nightly summary the platform runs by itself: SCHEDULE at work.

At 02:00 Paris time it runs as a job (`trigger` and `caller` "schedule"), with
SCHEDULE_PARAMS as its parameters; a call runs it now, with the caller's.
"""

SCHEDULE = "0 2 * * *"
SCHEDULE_TZ = "Europe/Paris"
SCHEDULE_PARAMS = {"days": 1}


def main(request, days: int = 7):
    """Args:
    days: how many days the summary covers
    """
    scheduled = request.environ.get("scriptgate.caller") == "schedule"
    return {"summary": f"orders of the last {days} day(s)", "scheduled": scheduled}
