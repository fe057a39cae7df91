"""Train a method for two steps on toy-pedes, then evaluate the checkpoint it selected."""

from __future__ import annotations

from tbps_bench.cli import main
from tbps_bench.results import load_result

#: the person-image size the small smoke runs use
SMALL_IMAGES = ["--method-arg", "image_height=64", "--method-arg", "image_width=32"]


def train_and_evaluate(tmp_path, method, method_args):
    runs, out = tmp_path / "runs", tmp_path / "res"
    train = ["train", "-m", method, "-d", "toy-pedes", "--epochs", "1", "--max-steps", "2", "--out", str(runs)]
    assert main([*train, *method_args]) == 0
    checkpoint = runs / method / "toy-pedes" / "seed0" / "best"
    evaluate = ["eval", "-m", method, "-d", "toy-pedes", "--limit", "24", "--checkpoint", str(checkpoint)]
    assert main([*evaluate, "--out", str(out), *method_args]) == 0
    return load_result(next(out.rglob("*.json")))
