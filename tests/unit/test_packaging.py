"""The distribution ships every sub-package: the Docker image installs it with `pip install .`
(not editable), where a package missing from pyproject.toml is simply not there."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def test_every_service_package_is_in_the_distribution() -> None:
    declared = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "service").rglob("__init__.py")
    }
    assert found <= declared, f"add to [tool.setuptools] packages: {sorted(found - declared)}"


def test_the_script_authors_package_is_in_the_distribution() -> None:
    """`from scriptgate import progress` in a script needs `scriptgate` installed."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "scriptgate" in declared["packages"]
    assert (REPO / "scriptgate" / "__init__.py").is_file()
