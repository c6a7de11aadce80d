"""Map a URL path to a zone and a script file, refusing anything that could escape a zone.

The URL path arrives percent-decoded from the WSGI server, so `%2e%2e` is already `..`
and `%2f` is already `/`. Whatever the spelling, a path is only served when every
segment is a plain public name and the real path of the file, symlinks resolved, lies
inside its zone folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from service.scripts.problems import NoScript
from service.scripts.revision import served_root

KEYED_ZONES = ("api", "admin")  # a first URL segment that selects its own zone
ZONES = ("root", *KEYED_ZONES)
PLATFORM_ZONE = "platform"
PLATFORM_PREFIX = "/_platform"
UNMATCHED = "__unmatched__"
SCRIPT_SUFFIX = ".py"
MAX_SEGMENTS = 32
MAX_SEGMENT_LENGTH = 255
_RESERVED_ROOT_NAMES = frozenset(KEYED_ZONES)


@dataclass(frozen=True)
class Target:
    """What a URL asks for, before any file is looked at."""

    zone: str
    rel_path: str  # zone-relative, '/'-separated, e.g. "reports/daily.py"


def zone_of(url_path: str) -> tuple[str, str]:
    """Split a URL path into (zone, rest); the first segment alone decides the zone."""
    if url_path == PLATFORM_PREFIX or url_path.startswith(PLATFORM_PREFIX + "/"):
        return PLATFORM_ZONE, url_path[len(PLATFORM_PREFIX) + 1 :]
    path = url_path[1:] if url_path.startswith("/") else url_path
    first, _, rest = path.partition("/")
    if first in KEYED_ZONES:
        return first, rest
    return "root", path


def is_public_name(name: str) -> bool:
    """A file or folder name that may be served or listed."""
    return bool(name) and name[0] not in "_." and "\\" not in name and "\x00" not in name


def parse_target(url_path: str) -> Target:
    """Validate a URL path's shape; raises NoScript for anything not servable."""
    zone, rest = zone_of(url_path)
    segments = rest.split("/")
    if zone == PLATFORM_ZONE or not rest or len(segments) > MAX_SEGMENTS:
        raise NoScript(url_path)
    for segment in segments:
        if not is_public_name(segment) or len(segment) > MAX_SEGMENT_LENGTH:
            raise NoScript(url_path)
    name = segments[-1]
    if not name.endswith(SCRIPT_SUFFIX) or name == SCRIPT_SUFFIX:
        raise NoScript(url_path)
    # /API/x.py must not reach scripts/api/x.py on a case-insensitive filesystem.
    if zone == "root" and segments[0].lower() in _RESERVED_ROOT_NAMES:
        raise NoScript(url_path)
    return Target(zone, rest)


def url_for_script(zone: str, path: str) -> str:
    """The URL of a zone-relative path (a platform endpoint's name for zone platform)."""
    if zone == PLATFORM_ZONE:
        return f"{PLATFORM_PREFIX}/{path}"
    return f"/{path}" if zone == "root" else f"/{zone}/{path}"


def zone_and_script(scripts_dir: Path, real_path: str) -> tuple[str, str]:
    """(zone, zone-relative path) of a script file found by `locate`."""
    return zone_of("/" + os.path.relpath(real_path, scripts_dir).replace(os.sep, "/"))


def zone_dir(scripts_dir: Path, zone: str) -> Path:
    return scripts_dir if zone == "root" else scripts_dir / zone


def locate(scripts_dir: Path, target: Target) -> str:
    """Return the real path of the target's file, or raise NoScript.

    `scripts_dir` must be absolute (Settings does that). It is resolved here, once per
    lookup, so a git-sync link swapped since startup leads to the new revision, and the
    whole check happens inside one real folder (see revision.py).
    """
    base = str(zone_dir(Path(served_root(scripts_dir)), target.zone))
    real = os.path.realpath(os.path.join(base, target.rel_path))
    if not real.startswith(base + os.sep):
        raise NoScript(target.rel_path)
    inside = real[len(base) + 1 :].split(os.sep)
    # A symlink may point elsewhere inside the zone, but never at a private file or,
    # from the root zone, into api/ or admin/.
    if not all(is_public_name(part) for part in inside):
        raise NoScript(target.rel_path)
    if target.zone == "root" and inside[0].lower() in _RESERVED_ROOT_NAMES:
        raise NoScript(target.rel_path)
    if not real.endswith(SCRIPT_SUFFIX) or not os.path.isfile(real):
        raise NoScript(target.rel_path)
    return real


def list_scripts(scripts_dir: Path, zone: str) -> list[str]:
    """Zone-relative paths of every public script of a zone, sorted: what would be served."""
    return [rel for rel, _ in located_scripts(scripts_dir, zone)]


def located_scripts(scripts_dir: Path, zone: str) -> list[tuple[str, str]]:
    """(zone-relative path, real path) of every public script of a zone, sorted by path:
    what `locate` would answer for each, found in one walk.

    Plain files in plain folders are inside the zone by construction, and their path is
    their real path; only what a symlink leads to is resolved and checked the way a
    request would be (`locate`). A listing of hundreds of scripts so costs one stat per
    file, not a realpath (a stat per path segment) per file.
    """
    scripts_dir = Path(served_root(scripts_dir))  # one revision for the whole listing
    folder = str(zone_dir(scripts_dir, zone))
    found: list[tuple[str, str]] = []
    _walk(scripts_dir, zone, folder, "", found, linked=os.path.islink(folder))
    found.sort()
    return found


def _walk(
    scripts_dir: Path, zone: str, folder: str, rel: str, found: list[tuple[str, str]], linked: bool
) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not is_public_name(name):
            continue
        rel_name = f"{rel}/{name}" if rel else name
        if zone == "root" and not rel and name.lower() in _RESERVED_ROOT_NAMES:
            continue
        via_link = linked or entry.is_symlink()
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            if rel_name.count("/") < MAX_SEGMENTS - 1:
                _walk(scripts_dir, zone, entry.path, rel_name, found, via_link)
        elif name.endswith(SCRIPT_SUFFIX) and name != SCRIPT_SUFFIX and entry.is_file():
            real = entry.path
            if via_link:
                try:
                    real = locate(scripts_dir, Target(zone, rel_name))
                except NoScript:
                    continue
            found.append((rel_name, real))
