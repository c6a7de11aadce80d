"""Shared helpers for scripts: import them with `from formatting import ...`."""

from datetime import date


def iso_day(day: date) -> str:
    return day.isoformat()
