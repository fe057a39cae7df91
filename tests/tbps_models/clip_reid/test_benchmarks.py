"""Encoding throughput of the IRRA-family towers at the real size, beside the machine's matmul rate.

ViT-B/16 at 384 x 128 (stride 16: 192 patches + the class token) and the 12-layer, 512-wide text
transformer over 77 tokens, random weights, batch 64, fp32. "Useful" work counts the multiply-adds
of the linear layers and of attention; the floor is the rate of a 2048^3 fp32 matrix product measured
in the same run. Run: ``pytest tests/tbps_models/clip_reid/test_benchmarks.py -m heavy -n 0 --benchmark-enable -s``.
"""

from __future__ import annotations

import pytest
import torch

from tbps_models.clip_reid.model import ClipReidModel

from clip_sizes import VIT_B16

BATCH = 64


def _transformer_flops(tokens: int, width: int, mlp: int, layers: int) -> float:
    """2 x multiply-adds of q, k, v, out projections, the MLP and the two attention products."""
    per_layer = 2 * (4 * tokens * width * width + 2 * tokens * width * mlp + 2 * tokens * tokens * width)
    return float(layers * per_layer)


def _image_flops() -> float:
    tokens = VIT_B16.grid[0] * VIT_B16.grid[1] + 1
    patches = 2 * (tokens - 1) * VIT_B16.vision_width * 3 * VIT_B16.patch_size**2
    vit = _transformer_flops(tokens, VIT_B16.vision_width, VIT_B16.vision_mlp, VIT_B16.vision_layers)
    return patches + vit + 2 * tokens * VIT_B16.vision_width * VIT_B16.embed_dim


def _text_flops() -> float:
    tokens = VIT_B16.context_length
    body = _transformer_flops(tokens, VIT_B16.text_width, VIT_B16.text_mlp, VIT_B16.text_layers)
    return body + 2 * tokens * VIT_B16.text_width * VIT_B16.embed_dim


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "irra": ClipReidModel(VIT_B16, "irra", embedding="bge").eval(),
        "rde": ClipReidModel(VIT_B16, "rde", embedding="both").eval(),
    }


@pytest.fixture(scope="module")
def inputs(models):
    pixels = torch.randn(BATCH, 3, 384, 128)
    captions = ["a woman in a red coat carrying a black purse, with white sneakers and long dark hair"] * BATCH
    return pixels, models["irra"].tokenize(captions)


@pytest.mark.heavy
@pytest.mark.benchmark(group="clip-reid-encoding")
@pytest.mark.parametrize("case", ["irra-images", "irra-captions", "rde-images", "rde-captions", "matmul-rate"])
def test_encoding_throughput(benchmark, models, inputs, case):
    pixels, ids = inputs
    if case == "matmul-rate":
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        benchmark.pedantic(torch.mm, args=(a, b), rounds=10, iterations=1, warmup_rounds=2)
        benchmark.extra_info["GFLOP_per_s"] = round(2 * 2048**3 / benchmark.stats.stats.min / 1e9, 1)
        return
    family, kind = case.split("-")
    model = models[family]
    encode, batch, flops = (
        (model.embed_images, pixels, _image_flops()) if kind == "images" else (model.embed_texts, ids, _text_flops())
    )
    with torch.inference_mode():
        out = benchmark.pedantic(encode, args=(batch,), rounds=2, iterations=1, warmup_rounds=1)
    assert out.shape[0] == BATCH and bool(torch.isfinite(out).all())
    seconds = benchmark.stats.stats.min
    benchmark.extra_info[f"{kind}_per_s"] = round(BATCH / seconds, 1)
    benchmark.extra_info["useful_GFLOP_per_s"] = round(BATCH * flops / seconds / 1e9, 1)
