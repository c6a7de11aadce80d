"""Say hello to a caller, in one of a few languages (benchmark script).

This is the script both the source post's dispatcher and Scriptgate serve in the
benchmark. It is deliberately the size of a real internal endpoint (constants, a small
data model, validation, formatting helpers) rather than a one-liner, because the source
post's dispatcher re-executes the whole file on every request and that cost grows with
the file. Only `main` runs per request; its default answer is
{"message": "Hello, Guest!"}.

No `from __future__ import annotations` here: with it, `@dataclass` looks its module up
in sys.modules, and the source post's dispatcher never puts the module there, so the
script would fail to import under that dispatcher.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

from greeting import DEFAULT_NAME, TEMPLATES, clean_name, greet

METHODS = ["GET", "POST"]
TIMEOUT = 5

SUPPORTED_LANGUAGES = tuple(sorted(TEMPLATES))
DEFAULT_LANGUAGE = "en"
MAX_BODY_FIELDS = 16
OFFICE_HOURS = (8, 18)
HOLIDAYS = {
    date(2025, 1, 1),
    date(2025, 5, 1),
    date(2025, 10, 10),
    date(2025, 12, 25),
}
TIMEZONES = {
    "utc": timezone.utc,
    "taipei": timezone(timedelta(hours=8), "Asia/Taipei"),
    "berlin": timezone(timedelta(hours=1), "Europe/Berlin"),
    "new_york": timezone(timedelta(hours=-5), "America/New_York"),
}


class BadInput(ValueError):
    """A request parameter the endpoint refuses; the message is shown to the caller."""


@dataclass(frozen=True)
class GreetingRequest:
    name: str = DEFAULT_NAME
    language: str = DEFAULT_LANGUAGE
    zone: str = "utc"
    verbose: bool = False
    tags: tuple[str, ...] = ()

    def with_defaults(self) -> "GreetingRequest":
        return GreetingRequest(
            name=self.name or DEFAULT_NAME,
            language=self.language if self.language in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE,
            zone=self.zone if self.zone in TIMEZONES else "utc",
            verbose=self.verbose,
            tags=self.tags,
        )


@dataclass
class GreetingDetails:
    local_time: str
    office_open: bool
    holiday: bool
    language: str
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_bool(raw: str | None) -> bool:
    if raw is None:
        return False
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise BadInput(f"not a yes/no value: {raw!r}")


def parse_tags(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    tags = tuple(t.strip().lower() for t in raw.split(",") if t.strip())
    if len(tags) > MAX_BODY_FIELDS:
        raise BadInput(f"at most {MAX_BODY_FIELDS} tags")
    return tags


def read_body(request) -> dict:
    """The JSON body of a POST, or {}; refuses anything but a small flat object."""
    if request.method != "POST":
        return {}
    raw = request.get_data(cache=True, as_text=True)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(f"body is not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object")
    if len(data) > MAX_BODY_FIELDS:
        raise BadInput(f"at most {MAX_BODY_FIELDS} fields")
    return {str(k): v for k, v in data.items() if isinstance(v, str | int | float | bool)}


def parse_request(request) -> GreetingRequest:
    body = read_body(request)
    args = request.args
    return GreetingRequest(
        name=clean_name(str(body.get("name") or args.get("name") or "")),
        language=str(body.get("lang") or args.get("lang") or DEFAULT_LANGUAGE).lower(),
        zone=str(body.get("tz") or args.get("tz") or "utc").lower(),
        verbose=parse_bool(args.get("verbose")),
        tags=parse_tags(args.get("tags")),
    ).with_defaults()


def local_now(zone: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(TIMEZONES.get(zone, timezone.utc))


def is_office_open(moment: datetime) -> bool:
    start, end = OFFICE_HOURS
    return moment.weekday() < 5 and start <= moment.hour < end and not is_holiday(moment)


def is_holiday(moment: datetime) -> bool:
    return moment.date() in HOLIDAYS


def next_working_day(day: date) -> date:
    candidate = day + timedelta(days=1)
    for _ in range(14):
        if candidate.weekday() < 5 and candidate not in HOLIDAYS:
            return candidate
        candidate += timedelta(days=1)
    return candidate


def details_for(greeting: GreetingRequest, now: datetime | None = None) -> GreetingDetails:
    moment = local_now(greeting.zone, now)
    return GreetingDetails(
        local_time=moment.isoformat(timespec="seconds"),
        office_open=is_office_open(moment),
        holiday=is_holiday(moment),
        language=greeting.language,
        tags=list(greeting.tags),
    )


def summarize(greeting: GreetingRequest) -> str:
    """One line for humans, used by the text variant of the answer."""
    parts = [greet(greeting.name, greeting.language)]
    if greeting.tags:
        parts.append("tags: " + ", ".join(greeting.tags))
    return " | ".join(parts)


def as_text(greeting: GreetingRequest) -> str:
    details = details_for(greeting)
    lines = [
        summarize(greeting),
        f"local time: {details.local_time}",
        f"office open: {'yes' if details.office_open else 'no'}",
    ]
    if not details.office_open:
        lines.append(f"next working day: {next_working_day(date.today()).isoformat()}")
    return "\n".join(lines) + "\n"


def error(message: str, status: int = 400) -> tuple[dict, int]:
    return {"error": "bad request", "detail": message}, status


def main(request):
    try:
        greeting = parse_request(request)
    except BadInput as exc:
        return error(str(exc))
    if request.args.get("format") == "text":
        return as_text(greeting)
    answer = {"message": greet(greeting.name, greeting.language)}
    if greeting.verbose:
        answer["details"] = details_for(greeting).to_dict()
    return answer
