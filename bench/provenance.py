"""What is needed to reproduce a number: versions, the package's own git state, device, argv."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import tbps_bench

_LIBRARIES = ("torch", "torchvision", "transformers", "datasets", "numpy", "safetensors", "pillow")


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the checkout that holds this package (not of the cwd)."""
    package_dir = Path(tbps_bench.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        # generated pages and result files (leaderboards/) are outputs, not code: they do not make a run dirty
        top = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            [
                "git",
                "-C",
                top or str(package_dir),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!leaderboards",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sanitize_argv(argv: list[str]) -> list[str]:
    """Absolute paths name a user's machine layout: keep only their last component."""
    cleaned = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        target = value if sep else arg
        if os.path.isabs(target):
            target = "<...>/" + os.path.basename(target.rstrip("/"))
            arg = f"{key}={target}" if sep else target
        cleaned.append(arg)
    return cleaned


def provenance(device: torch.device, seed: int | None, argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "package": "tbps-bench",
        "package_version": tbps_bench.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "libraries": _library_versions(),
        "device": describe_device(device),
        "seed": seed,
        "argv": sanitize_argv(list(sys.argv[1:] if argv is None else argv)),
    }
