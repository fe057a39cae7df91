"""Every registered method at tiny size, at the size it declares beside its code (timm's pattern)."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from tbps_bench.cli import main
from tbps_bench.registry import METHODS
from tbps_bench.results import load_result

from paths import FIXTURES

LIMIT = 24


def _declared_smoke_arguments(name: str, tmp_path: Path) -> list[str]:
    """What a method declares next to its code (``smoke_arguments``): ``{fixtures}`` is this
    repository's ``tests/fixtures``, and a ``.xz`` fixture (committed compressed) is decompressed."""
    arguments = []
    for value in getattr(METHODS.load(name), "smoke_arguments", ()):
        value = value.replace("{fixtures}", str(FIXTURES))
        if value.endswith(".xz"):
            compressed = Path(value)
            value = str(tmp_path / compressed.stem)
            Path(value).write_bytes(lzma.decompress(compressed.read_bytes()))
        arguments.append(value)
    return arguments


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_registered_method_evaluates_at_tiny_size(name, tmp_path):
    """timm's pattern: every registered method, at the small size it declares beside its code
    (``Method.smoke_arguments``: ``--method-arg`` values, or an option and its value), evaluates
    both directions on a few toy-pedes items. There is no list here to add a new method to."""
    declared = _declared_smoke_arguments(name, tmp_path)
    args = ["eval", "-m", name, "-d", "toy-pedes", "--limit", str(LIMIT), "--out", str(tmp_path / "res")]
    args += ["--device", "cpu"]
    values = iter(declared)
    for value in values:
        args += [value, next(values)] if value.startswith("--") else ["--method-arg", value]
    assert main(args) == 0, f"method '{name}' with its smoke_arguments {declared} did not evaluate"
    result = load_result(next((tmp_path / "res").rglob("*.json")))
    assert result["status"] == "partial"
    assert result["method"]["origin"] == "builtin"
    assert set(result["metrics"]) >= {"t2i", "i2t"}
