"""Checkpoint folders written by the training loop, read back with one clear line for every way a
folder can be wrong: missing files, unreadable JSON or tensors, another method's folder, shapes."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbps_bench.errors import BenchError


def load_torch_file(path: str | Path, expected: str, contents: str) -> Any:
    """``torch.load(weights_only=True)`` of a released checkpoint, never executing it: a missing file,
    pickled objects and a damaged file each get one line naming the file and what was ``expected``
    (``contents``: what it should hold)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist (expected {expected})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BenchError(
            f"checkpoint {path} holds pickled Python objects, which weights-only loading refuses; expected {contents}"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise BenchError(f"checkpoint {path} cannot be read (truncated or not a torch file): {exc}") from exc


def read_json(path: Path, method: str) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"{path.parent} is not a {method} checkpoint: {path.name} is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable JSON ({exc}); expected the {method} checkpoint's config") from exc
    if not isinstance(value, dict):
        raise BenchError(f"{path}: expected a JSON object (the {method} checkpoint's config)")
    return value


def read_tensors(path: Path, method: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise BenchError(f"{path.parent} is not a {method} checkpoint: {path.name} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for damaged files
        raise BenchError(f"{path}: unreadable tensors ({exc}); the file is damaged or cut short") from exc


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, optional=()) -> None:
    """``module.load_state_dict`` that names missing, unexpected and mis-shaped keys in one line.
    Keys ending in one of ``optional`` may be absent (buffers, unused scalars)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(tuple(optional)))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(state)
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        detail = {"missing": missing[:3], "unexpected": unexpected[:3], "wrong shape": wrong[:3]}
        shown = "; ".join(f"{name} {', '.join(keys)}" for name, keys in detail.items() if keys)
        raise BenchError(f"{source}: the {what} weights do not fit: {shown}")
    module.load_state_dict(state, strict=False)
