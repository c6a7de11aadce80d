"""Download a CSV file: send_file with a file name, from memory or from disk."""

import csv
import io
from datetime import date

from flask import send_file

METHODS = ["GET"]


def main(request, day: date | None = None):
    day = day or date.today()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["day", "script", "calls"])
    writer.writerow([day.isoformat(), "greet.py", 42])
    return send_file(
        io.BytesIO(text.getvalue().encode()),
        mimetype="text/csv",
        as_attachment=True,
        download_name=f"calls-{day.isoformat()}.csv",
    )
