"""Name -> plugin registries for methods and datasets.

Every entry is a lazy ``"module:attr"`` string, so that listing never imports torch-heavy code.
Built-ins and third-party packages alike declare entry points (groups ``tbps_bench.models`` and
``tbps_bench.datasets``): those of this project's own distribution have origin "builtin". Ad-hoc
files add entries through ``--plugin path.py`` calling ``register_method``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps_bench.errors import BenchError


@dataclass
class Entry:
    name: str
    target: str | Callable[..., Any]  # "module:attr" or the object itself
    origin: str  # "builtin", "entry point (dist)", "file (path)", "python"


def resolve(target: str | Callable[..., Any]) -> Any:
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry:
    """One kind of plugin (methods or datasets)."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] | None = None
        self._pending: list[Entry] = []

    def _ensure(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda ep: ep.name):
                dist = ep.dist.name if ep.dist is not None else "unknown"
                origin = "builtin" if _normalized(dist) == DISTRIBUTION else f"entry point ({dist})"
                self._add(Entry(ep.name, ep.value, origin))
            for entry in self._pending:
                self._add(entry)
            self._pending.clear()
        return self._entries

    def _add(self, entry: Entry) -> None:
        assert self._entries is not None
        if entry.name in self._entries:
            other = self._entries[entry.name]
            raise BenchError(
                f"duplicate {self.kind} name '{entry.name}': registered by {other.origin} and again by {entry.origin}"
            )
        self._entries[entry.name] = entry

    def register(self, name: str, target: str | Callable[..., Any], origin: str = "python") -> None:
        entry = Entry(name, target, origin)
        if self._entries is None:
            self._pending.append(entry)
        else:
            self._add(entry)

    def names(self) -> list[str]:
        return sorted(self._ensure())

    def entries(self) -> list[Entry]:
        return [self._ensure()[name] for name in self.names()]

    def entry(self, name: str) -> Entry:
        entries = self._ensure()
        if name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise BenchError(f"unknown {self.kind} '{name}'{hint} (known: {', '.join(sorted(entries)) or 'none'})")
        return entries[name]

    def load(self, name: str) -> Any:
        entry = self.entry(name)
        try:
            return resolve(entry.target)
        except BenchError:
            raise
        except Exception as exc:  # a broken plugin must name itself, not crash obscurely
            raise BenchError(
                f"{self.kind} '{name}' ({entry.origin}) failed to load from {entry.target!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


DISTRIBUTION = "tbps-bench"


def _normalized(distribution: str) -> str:
    return distribution.lower().replace("_", "-")


METHODS = Registry("method", "tbps_bench.models")
DATASETS = Registry("dataset", "tbps_bench.datasets")


def register_method(name: str, target: str | Callable[..., Any] | None = None):
    """Register a method class or factory; usable as a decorator in a ``--plugin`` file."""
    if target is not None:
        METHODS.register(name, target, _caller_origin())
        return target

    def decorator(obj):
        METHODS.register(name, obj, _caller_origin())
        return obj

    return decorator


def register_dataset(name: str, target: str | Callable[..., Any]) -> None:
    DATASETS.register(name, target, _caller_origin())


_loading_file: str | None = None
_loaded_files: set[Path] = set()


def _caller_origin() -> str:
    return f"file ({_loading_file})" if _loading_file else "python"


def load_plugin_file(path: str | Path) -> None:
    """Import a plugin file by path; its ``register_*`` calls are attributed to it."""
    global _loading_file
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"plugin file not found: {path} (expected a Python file that calls register_method)")
    if path.resolve() in _loaded_files:  # a second --plugin of the same file is a no-op
        return
    module_name = f"tbps_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot import plugin file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _loading_file = path.name
    try:
        spec.loader.exec_module(module)
        _loaded_files.add(path.resolve())
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"plugin file {path} raised on import: {type(exc).__name__}: {exc}") from exc
    finally:
        _loading_file = None
