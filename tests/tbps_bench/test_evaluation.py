"""One split through ``tbps_bench.evaluation``: its settings, its timings record, captions tokenized
once (truncation counted there and cached), and the parts a dataset's adapter reports."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from tbps_bench.adapters import evaluation_parts
from tbps_bench.cli import main
from tbps_bench.evaluation import EncodeTimings, EvalSettings, Timings
from tbps_bench.harness import EvalOptions, load_eval_split
from tbps_bench.options import Amp, FeatureStorage
from tbps_bench.registry import METHODS

COUNTING_PLUGIN = """
import torch

from tbps_bench.methods import Method
from tbps_bench.registry import register_method

TOKENIZED = []


@register_method("counts-tokens")
class CountsTokens(Method):
    name = "counts-tokens"
    needs_pixels = False

    def tokenize(self, captions):
        TOKENIZED.extend(captions)
        lengths = torch.tensor([float(len(c.split())) for c in captions])
        return {"length": lengths, "truncated": lengths > 22}

    def encode_images(self, batch):
        return torch.nn.functional.one_hot(batch["pid"] % 8, 8).float()

    def encode_texts(self, batch):
        return torch.stack([batch["tokens"]["length"], torch.ones_like(batch["tokens"]["length"])], 1).repeat(1, 4)
"""


def test_options_give_the_settings_of_the_same_names():
    options = EvalOptions(batch_size=8, amp="bf16", workers=1, feature_dtype="fp16", score_tile=12, pair_batch=5)
    settings = options.settings()
    assert settings == EvalSettings(8, Amp.BF16, 1, FeatureStorage.FP16, 12, 5)
    assert settings.shard_unit == 24  # whole batches and whole tiles
    with pytest.raises(Exception, match="amp must be one of none, bf16, fp16"):
        EvalSettings(amp="fp8")


def test_timings_count_the_scoring_once():
    """``metrics_s`` includes a pairwise method's scoring: the total adds it once."""
    timings = Timings(EncodeTimings(1.0, 2.0, images_cached=False, texts_cached=True), 3.0, pairwise_scoring_s=2.5)
    record = timings.as_record(images=10, captions=40)
    assert record["total_s"] == 6.0 and record["pairwise_scoring_s"] == 2.5
    assert record["cache_hits"] == {"images": False, "texts": True}
    assert record["throughput"] == {"images_per_s": 10.0, "captions_per_s": 20.0}
    assert "pairwise_scoring_s" not in Timings(timings.encode, 3.0).as_record(10, 40)


def test_captions_are_tokenized_once_and_their_truncation_is_cached(tmp_path, monkeypatch, capsys):
    """The truncation count comes from the tokenization that encodes the captions (no second pass),
    and a cache hit, which tokenizes nothing, reports the same count."""
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path / "cache"))
    plugin = tmp_path / "counts_tokens.py"
    plugin.write_text(COUNTING_PLUGIN)
    args = ["--plugin", str(plugin), "eval", "-m", "counts-tokens", "-d", "toy-pedes", "--limit", "40"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    module = sys.modules[METHODS.load("counts-tokens").__module__]
    captions = load_eval_split("toy-pedes", None, "test").limited(40).captions
    assert sorted(module.TOKENIZED) == sorted(captions)  # each caption once
    expected = sum(len(c.split()) > 22 for c in captions)
    assert 0 < expected < len(captions)
    first = json.loads(next((tmp_path / "first").rglob("*.json")).read_text())
    assert first["protocol"]["truncated_captions"] == expected
    assert f"note: {expected} of {len(captions)} toy-pedes/test captions are longer" in capsys.readouterr().err
    module.TOKENIZED.clear()
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = json.loads(next((tmp_path / "again").rglob("*.json")).read_text())
    assert again["timings"]["cache_hits"]["texts"] and module.TOKENIZED == []
    assert again["protocol"]["truncated_captions"] == expected


def test_the_parts_of_a_split_come_from_its_adapter():
    split = SimpleNamespace(split="test")
    part = SimpleNamespace(split="test/cuhk")
    assert evaluation_parts(SimpleNamespace(), split) == [split]
    assert evaluation_parts(SimpleNamespace(subsets=lambda s: [part] if s is split else []), split) == [split, part]
