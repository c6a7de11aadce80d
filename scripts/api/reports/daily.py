"""Daily report as JSON, using a helper from _lib and one from this folder."""

from datetime import date

from _totals import total
from formatting import iso_day

METHODS = ["GET", "POST"]


def main(request):
    rows = [{"item": "widgets", "count": 3}, {"item": "gadgets", "count": 4}]
    return {"day": iso_day(date.today()), "rows": rows, "total": total(rows)}
