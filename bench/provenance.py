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


def cpu_model() -> str:
    """The processor's model name (what makes a CPU number differ between hosts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU model and instruction set in use, threads, GPU, CUDA and cuDNN, determinism: the things that
    change floating-point results between machines of one software setup."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # oneDNN (convolutions, matrix products) picks its instruction set apart from ATen; together
        # they decide the rounding, so a capped run is reproduced only under the same caps
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            info["gpus"].append({"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"})
    return info


def provenance(device: torch.device, seed: int | None, argv: list[str] | None = None) -> dict[str, Any]:
    return {
        "package": "tbps-bench",
        "package_version": tbps_bench.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "libraries": _library_versions(),
        "device": describe_device(device),
        "hardware": hardware(),
        "seed": seed,
        "argv": sanitize_argv(list(sys.argv[1:] if argv is None else argv)),
    }
