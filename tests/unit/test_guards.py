"""Every platform view is guarded as it declares, and only the views named here are open.

A new view must declare a guard (PlatformView has no default); this walk makes an open
one a deliberate change of this file, not an oversight of a list elsewhere.
"""

from __future__ import annotations

import pytest

from service.access.policy import Guard
from service.config import parse_networks
from service.platform.views import PREFIX_VIEWS, VIEWS
from tests.unit.conftest import ADMIN_KEY

# What anyone past API_TRUSTED_IPS may read without a key, and why.
OPEN = {
    "health",  # probes
    "openapi.json",  # shows each caller only the scripts it may call
    "docs",  # the page over it
    "",  # /_platform/ leads to the console
    "console",  # the console page, its assets, and its listing, filtered per caller
}
REDIRECTS = {"/_platform/"}
JOB_ID = "A" * 32


def every_view() -> list[tuple[str, object]]:
    paths = [(path, view) for path, view in VIEWS.items()]
    for prefix, suffix, view in PREFIX_VIEWS:
        paths.append((prefix + JOB_ID + suffix, view))
    return paths


@pytest.mark.parametrize(("path", "view"), every_view(), ids=lambda v: str(v)[:40])
def test_every_view_declares_a_guard(path: str, view) -> None:
    assert isinstance(view.guard, Guard), f"{path}: no guard declared"
    is_open = view.guard in (Guard.OPEN, Guard.CALLER_IF_ANY)
    name = view.name.split("/")[0]
    assert is_open == (name in OPEN), f"{path}: {view.guard} but listed as open={name in OPEN}"


@pytest.mark.parametrize(("path", "view"), every_view(), ids=lambda v: str(v)[:40])
def test_a_view_refuses_a_stranger_unless_it_is_open(make_app, path: str, view) -> None:
    """From outside PLATFORM_TRUSTED_IPS without a key: the view's answer or a refusal."""
    app = make_app(platform_trusted_ips=parse_networks("x", "10.0.0.0/8"))
    stranger = app.test_client().get(path)
    if view.name.split("/")[0] in OPEN:
        assert stranger.status_code == (302 if path in REDIRECTS else 200), path
        return
    # A job id another caller cannot see is a 404 like a wrong id: nothing leaks.
    assert stranger.status_code in (401, 403, 404), (path, stranger.status_code)
    assert stranger.get_json()["error"] in ("unauthorized", "forbidden", "job not found")


def test_a_platform_key_reads_every_guarded_view(make_app) -> None:
    app = make_app(platform_trusted_ips=parse_networks("x", "10.0.0.0/8"))
    client = app.test_client()
    for path in VIEWS:
        answer = client.get(path, headers={"X-Admin-Key": ADMIN_KEY})
        assert answer.status_code == (302 if path in REDIRECTS else 200), (path, answer.status_code)
