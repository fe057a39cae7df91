"""Checkpoint folders that are damaged or of another method are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tbps_bench.cli import main


def _frozen_linear_checkpoint(tmp_path: Path) -> Path:
    from tbps_models.frozen_linear.method import FrozenLinearMethod

    folder = tmp_path / "fl"
    FrozenLinearMethod(dim=32).save_checkpoint(folder, {"dataset": "toy-pedes"})
    return folder


def test_damaged_or_foreign_checkpoint_folders_are_one_line(tmp_path, capsys):
    fl = _frozen_linear_checkpoint(tmp_path)
    foreign = tmp_path / "nafs-like"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"config": {"trunk": "resnet18"}, "meta": {}}))
    shutil.copy(fl / "projections.safetensors", foreign / "model.safetensors")
    names = ("truncated", "no-config", "wrong", "wrong-shape")
    truncated, no_config, wrong, wrong_shape = (shutil.copytree(fl, tmp_path / n) for n in names)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(fl / "projections.safetensors"))
    tensors["image_projection.weight"] = tensors["image_projection.weight"][:16]
    save_file(tensors, str(wrong_shape / "projections.safetensors"))
    weights = truncated / "projections.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    (no_config / "config.json").unlink()
    (wrong / "config.json").write_text(json.dumps({"config": {"dim": 16}, "meta": {}}))
    cases = [
        ("cmpm-cmpc", foreign, ["--method-arg", "trunk=resnet18"], "no 'settings'; this is not a cmpm-cmpc checkpoint"),
        ("frozen-linear", truncated, ["--method-arg", "dim=32"], "unreadable tensors"),
        (
            "frozen-linear",
            no_config,
            ["--method-arg", "dim=32"],
            "is not a frozen-linear checkpoint: config.json is missing",
        ),
        ("frozen-linear", wrong, ["--method-arg", "dim=32"], "has dim 16; the method was built with dim 32"),
        ("frozen-linear", wrong_shape, ["--method-arg", "dim=32"], "wrong shape image_projection.weight (16, 1280)"),
        ("nafs-tiny", fl, [], "no 'config' with a text_encoder; this is not a NAFS checkpoint"),
    ]
    for method, folder, extra, message in cases:
        out = tmp_path / f"res-{folder.name}"
        args = ["eval", "-m", method, "-d", "toy-pedes", "--limit", "8", "--checkpoint", str(folder), "--out", str(out)]
        assert main([*args, *extra]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and message in err[0], (method, folder.name, err)
        assert not out.exists() or not list(out.rglob("*.json"))
