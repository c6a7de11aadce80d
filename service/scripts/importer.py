"""How a script and its helper modules are found and compiled.

Scripts and helpers are compiled straight from source, never from a `.pyc`: bytecode
caches are keyed on a one-second mtime, so a quick edit could otherwise keep serving the
old code. Helpers come from the script's own folder and `_lib/`, private names included.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from typing import Any


class SourceLoader(importlib.machinery.SourceFileLoader):
    """Compile from source every time (see the module docstring)."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True)


class HelperFinder:
    """Finds helper modules in a script's own folder and in `_lib/`, private names included."""

    def __init__(self, search_dirs: list[str], root: str) -> None:
        self.search_dirs = search_dirs
        self.root = root + os.sep

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if path is None:
            dirs = self.search_dirs
        else:  # a submodule of a helper package: only look inside the scripts folder
            dirs = [p for p in path if str(p).startswith(self.root)]
        name = fullname.rpartition(".")[2]
        for directory in dirs:
            package = os.path.join(directory, name)
            init = os.path.join(package, "__init__.py")
            if os.path.isfile(init):
                return importlib.util.spec_from_file_location(
                    fullname,
                    init,
                    loader=SourceLoader(fullname, init),
                    submodule_search_locations=[package],
                )
            module = package + ".py"
            if os.path.isfile(module):
                return importlib.util.spec_from_file_location(
                    fullname, module, loader=SourceLoader(fullname, module)
                )
        return None
