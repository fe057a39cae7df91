"""The source a method's cached features depend on, as one hash."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from tbps_bench.fileio import sha256_file, sha256_json


@functools.cache
def source_fingerprint(cls: type) -> str:
    """A hash of the source that defines a method: its module's file; for a module inside a package,
    every Python file of that package folder (a model's other modules); for a plugin file, also every
    module it has imported from its own folder (a base class in a sibling file). Editing any of them
    invalidates its cached features."""
    module = sys.modules.get(cls.__module__)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.is_file():
        return "unknown"
    if getattr(module, "__package__", ""):
        root, files = path.parent, sorted(path.parent.glob("*.py"))
    else:
        root = path.resolve().parent
        files = sorted({path.resolve(), *_plugin_modules_under(root)})
    return sha256_json([[str(f.relative_to(root)), sha256_file(f)] for f in files])


#: packages whose source is never part of a plugin's fingerprint (tbps-bench's own)
_OWN_PACKAGES = ("tbps_bench", "tbps_models", "tbps_datasets")


def _plugin_modules_under(folder: Path) -> list[Path]:
    """The source files of imported modules that live in ``folder`` or below it, other than installed
    distributions (a virtual environment inside the folder) and tbps-bench's own packages."""
    environment = Path(sys.prefix).resolve()
    found = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py") or name.split(".")[0] in _OWN_PACKAGES:
            continue
        resolved = Path(file).resolve()
        if resolved.is_relative_to(folder) and not resolved.is_relative_to(environment) and resolved.is_file():
            found.append(resolved)
    return found
