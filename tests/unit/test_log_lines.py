"""The request line's fast path writes exactly what `logger.info(..., extra=...)` writes."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

from service.observability.logs import build_logger, log_fields, utc_stamp

FIELDS = {
    "trace_id": "ab" * 16,
    "zone": "api",
    "query": {"name": "Rico", "tags": ["a", "b"]},
    "status": 200,
    "duration_ms": 0.512,
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_request_line_is_what_logger_info_writes(tmp_path):
    path = tmp_path / "framework.log"
    logger = build_logger("INFO", path, stdout=False)
    logger.info("request", extra=FIELDS)
    log_fields(logger, "request", FIELDS)
    ordinary, fast = _lines(path)
    assert list(fast) == list(ordinary)  # same fields, same order
    assert {k: v for k, v in fast.items() if k != "time"} == {
        k: v for k, v in ordinary.items() if k != "time"
    }


def test_request_line_follows_log_level(tmp_path):
    path = tmp_path / "framework.log"
    log_fields(build_logger("WARNING", path, stdout=False), "request", FIELDS)
    assert path.read_text() == ""


def test_request_line_secrets_are_scrubbed(tmp_path):
    path = tmp_path / "framework.log"
    logger = build_logger("INFO", path, stdout=False, scrub=lambda s: s.replace("Rico", "***"))
    log_fields(logger, "request", FIELDS)
    assert _lines(path)[0]["query"]["name"] == "***"


@pytest.mark.parametrize("seed", range(3))
def test_utc_stamp_matches_datetime(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        created = rng.uniform(0, 4_000_000_000)
        expected = datetime.fromtimestamp(created, tz=timezone.utc)
        expected_text = expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert utc_stamp(created) == expected_text, created
    assert utc_stamp(1.9999996) == "1970-01-01T00:00:02.000Z"  # rounds into the next second
