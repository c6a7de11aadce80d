"""The one script body every contender runs: bench/scripts/api/hello.py's `main`.

Scriptgate and the source post's dispatcher serve that file; the reference apps import
it here, so a contender's figure is its platform's cost around the same work, not a
difference in what the endpoint does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_main() -> Any:
    """`main(request)` of bench/scripts/api/hello.py, its `_lib` helpers importable."""
    lib = str(SCRIPTS / "_lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    spec = importlib.util.spec_from_file_location("bench_hello", SCRIPTS / "api" / "hello.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there
    spec.loader.exec_module(module)
    return module.main
