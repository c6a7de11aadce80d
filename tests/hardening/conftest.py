"""Print what the hardening tests measured at the end of the run.

`--soak-seconds` is registered in tests/conftest.py: pytest reads pytest_addoption only
from the root and initial conftest files, and this folder is not one of them when the
whole suite runs.
"""

from __future__ import annotations

import pytest

from tests.hardening.harness import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config):
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("hardening figures")
        for line in lines:
            terminalreporter.write_line(line)
