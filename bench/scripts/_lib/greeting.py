"""Greeting helpers shared by the benchmark scripts (imported as `from greeting import ...`)."""

from __future__ import annotations

import re
import unicodedata

DEFAULT_NAME = "Guest"
MAX_NAME_LENGTH = 64
_NAME_RE = re.compile(r"^[\w .'\-]+$", re.UNICODE)

TEMPLATES = {
    "en": "Hello, {name}!",
    "de": "Hallo, {name}!",
    "fr": "Bonjour, {name} !",
    "es": "¡Hola, {name}!",
    "zh": "{name},你好!",
}


def clean_name(raw: str | None) -> str:
    """A display name safe to echo back: normalised, trimmed, or the default."""
    if not raw:
        return DEFAULT_NAME
    name = unicodedata.normalize("NFC", raw).strip()
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        return DEFAULT_NAME
    return name


def greet(name: str, language: str = "en") -> str:
    template = TEMPLATES.get(language, TEMPLATES["en"])
    return template.format(name=name)
