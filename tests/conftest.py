"""Options shared by the whole suite (pytest only reads pytest_addoption here or at the root)."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=10.0,
        help="how long tests/hardening/test_soak.py keeps the load on (make soak uses 60)",
    )
