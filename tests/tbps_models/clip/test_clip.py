"""Method ``clip``: transformers' CLIPModel on person images (a tiny random config), zero-shot and fine-tuned."""

from __future__ import annotations

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.results import load_result

from tiny_clip import TINY_CLIP
from train_and_evaluate import SMALL_IMAGES, train_and_evaluate


@pytest.fixture(scope="module")
def tiny_clip():
    return TINY_CLIP


def test_clip_zero_shot_and_fine_tuned(tiny_clip, tmp_path):
    out = tmp_path / "zero"
    args = ["eval", "-m", "clip", "-d", "toy-pedes", "--limit", "24", "--out", str(out)]
    assert main([*args, "--method-arg", f"model={tiny_clip}", *SMALL_IMAGES]) == 0
    zero = load_result(next(out.rglob("*.json")))
    assert zero["method"]["arguments"]["mode"] == "zero-shot" and zero["method"]["trained_on"] is None
    tuned = train_and_evaluate(tmp_path, "clip", ["--method-arg", f"model={tiny_clip}", *SMALL_IMAGES])
    assert tuned["method"]["arguments"]["mode"] == "fine-tuned"
    assert tuned["method"]["trained_on"] == "toy-pedes"


def test_clip_position_embeddings_follow_the_person_aspect(tiny_clip):
    from tbps_models.clip.method import ClipMethod

    method = ClipMethod(model=str(tiny_clip), image_height=64, image_width=32)
    features = method.encode_images({"pixels": torch.randn(2, 3, 64, 32)})  # 8 x 4 patches, trained on 4 x 4
    assert features.shape == (2, 16)
    tokens = method.tokenize(["a man " * 60, "a woman"])
    assert tokens["truncated"].tolist() == [True, False]
    assert tokens["input_ids"].shape[1] == 77 and tokens["input_ids"][0, -1] == method.tokenizer.eos_token_id
