"""Method ``cmpm-cmpc``: its vocabulary from the train split, and a checkpoint that loads back."""

from __future__ import annotations

from train_and_evaluate import SMALL_IMAGES, train_and_evaluate


def test_cmpm_cmpc_builds_its_vocabulary_and_round_trips(tmp_path):
    args = ["--method-arg", "trunk=resnet18", *SMALL_IMAGES, "--method-arg", "min_count=3"]
    result = train_and_evaluate(tmp_path, "cmpm-cmpc", args)
    assert result["method"]["preprocessing"]["vocabulary"] > 20  # words seen >= 3 times in the train captions
    assert result["method"]["trained_on"] == "toy-pedes"
