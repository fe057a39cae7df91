"""The second stage of the shortlist re-ranking at the released sizes, against the authors' loop.

RaSa's released model: BERT-base (768 wide, 12 heads, FFN 3072, 12 layers, ``fusion_layer`` 6: 6 fusion
layers with cross-attention to ViT-B/16 tokens at 384 x 384, 577 x 768), ``max_words`` 50. APTM's:
the same BERT, cross-attention to Swin-B tokens at 384 x 128 (49 x 1024), 56 tokens. Random weights.
The authors' loops (RaSa ``Retrieval.py``, APTM ``reTools.py``) score one query's k = 128 pairs per
forward pass: every pair projects its image's tokens to keys and values in each fusion layer, every
caption is padded to the maximum length and every position runs to the last layer (their attention
arithmetic: ``softmax(q k^T / sqrt(d)) v`` written out). tbps-bench scores the same kind of pairs
grouped by image (keys and values once per image), with the linear layers on the real tokens only
and one row per pair in the last layer.

Time is compared per pair. In a real evaluation an image is on many shortlists (ICFG-PEDES: 19,848
texts x 128 / 2,933 images, about 866 text-to-image pairs per image); here each image gets
``PAIRS_PER_IMAGE`` pairs, fewer, so the per-image share counted here is larger than in the real run.
Caption lengths: ICFG-PEDES-like (mean 44 tokens, sd 8, clipped to the maximum; its captions average
37 words). Useful work is counted by ``torch.utils.flop_counter``; the floor is a 2048^3 matrix
product of the same precision in the same run. Run:
``PYTHONSAFEPATH=1 python -m pytest tests/tbps_bench/test_shortlist_benchmarks.py -m heavy -n 0 -s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tbps_bench.shortlist import PAIR_BATCH
from tbps_models.albef.model import CrossEncoder
from tbps_models.albef.text import BertShape

from albef_eager import eager_match

K = 128
PAIRS_PER_IMAGE = 128
IMAGES = 4
#: ICFG-PEDES test: 19,848 captions, 2,933 images; text-to-image pairs and image-to-text pairs
ICFG_PAIRS = 19848 * K + 2933 * K
BERT_BASE_FUSION = BertShape(768, 12, 12, 3072, 30522, 512, 6, tuple(range(6, 12)), 768)


@dataclass(frozen=True)
class Released:
    image_tokens: int
    image_width: int
    max_tokens: int
    mlp_head: bool  # APTM's two-layer matching head


SIZES = {
    "rasa": Released(image_tokens=577, image_width=768, max_tokens=50, mlp_head=False),
    "aptm": Released(image_tokens=49, image_width=1024, max_tokens=56, mlp_head=True),
}
#: (speedup over the authors' loop, fraction of the matmul rate) asserted. RaSa: the goal of its issue.
#: APTM: its 49 image tokens leave little per-image work to share, and the FLOPs per pair fall from 6.6
#: to 3.8 G (padding, the last layer's rows), so 1.74x is the most equal efficiency can give
GOALS = {"rasa": (3.0, 0.6), "aptm": (1.2, 0.5)}


class _Model(CrossEncoder):
    def __init__(self, sizes: Released):
        bert = BertShape(**{**BERT_BASE_FUSION.__dict__, "encoder_width": sizes.image_width})
        super().__init__(bert, 256)
        hidden = bert.hidden
        self.itm_head = (
            torch.nn.Sequential(
                torch.nn.Linear(hidden, 2 * hidden),
                torch.nn.LayerNorm(2 * hidden),
                torch.nn.GELU(),
                torch.nn.Linear(2 * hidden, 2),
            )
            if sizes.mlp_head
            else torch.nn.Linear(hidden, 2)
        )


def _setting(name: str):
    sizes = SIZES[name]
    torch.manual_seed(0)
    model = _Model(sizes).eval()
    generator = torch.Generator().manual_seed(1)
    texts = IMAGES * PAIRS_PER_IMAGE
    lengths = (torch.randn(texts, generator=generator) * 8 + 44).round().clamp(8, sizes.max_tokens).long()
    mask = (torch.arange(sizes.max_tokens)[None, :] < lengths[:, None]).long()
    states = torch.randn(texts, sizes.max_tokens, 768, generator=generator)
    tokens = torch.randn(IMAGES, sizes.image_tokens, sizes.image_width, generator=generator)
    return model, states, mask, tokens


def _ours(model, states, mask, tokens):
    """All IMAGES x PAIRS_PER_IMAGE pairs, grouped by image, in the harness's batches."""
    pair_image = torch.arange(IMAGES).repeat_interleave(PAIRS_PER_IMAGE)
    out = []
    for start in range(0, len(pair_image), PAIR_BATCH):
        rows = slice(start, start + PAIR_BATCH)
        distinct, local = torch.unique_consecutive(pair_image[rows], return_inverse=True)
        out.append(model.match(tokens[distinct], {"states": states[rows], "mask": mask[rows]}, local))
    return torch.cat(out)


def _authors_query(model, states, mask, tokens):
    """One query's K pairs in one forward pass, as their loop (their BERT code, these weights)."""
    images = tokens[torch.arange(K) % IMAGES]  # the query's K candidates
    fusion_layer = model.bert.shape.fusion_layer
    return eager_match(model, states[:1].expand(K, -1, -1), mask[:1].expand(K, -1), images, fusion_layer)


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


#: torch's FLOP counter has formulas for its GPU attention kernels but none for the CPU one, which it
#: would count as zero work (the fp32 cross-attention here runs in it)
_UNCOUNTED = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def _seconds(function, *args, rounds: int = 2) -> tuple[float, float]:
    """Best time of ``rounds`` runs, and the FLOPs of one run."""
    with FlopCounterMode(display=False, custom_mapping=_UNCOUNTED) as counter:
        function(*args)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best, float(counter.get_total_flops())


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_second_stage_against_the_authors_loop_and_the_matmul_floor(name, precision, benchmark):
    model, states, mask, tokens = _setting(name)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    before, floor_flops = _seconds(torch.mm, a, b, rounds=5)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else torch.no_grad()
    with torch.inference_mode(), context:
        ours, ours_flops = _seconds(_ours, model, states, mask, tokens, rounds=3)
        authors, authors_flops = _seconds(_authors_query, model, states, mask, tokens)
    # the floor is the machine's best: measured on both sides of the work, so that a slow moment on a
    # shared host during one of them cannot make the fraction look better than it is
    floor = min(before, _seconds(torch.mm, a, b, rounds=5)[0])
    per_pair_ours, per_pair_authors = ours / (IMAGES * PAIRS_PER_IMAGE), authors / K
    matmul_rate, achieved = floor_flops / floor, ours_flops / ours
    info = {
        "speedup_per_pair": round(per_pair_authors / per_pair_ours, 2),
        "ours_ms_per_pair": round(1e3 * per_pair_ours, 2),
        "authors_ms_per_pair": round(1e3 * per_pair_authors, 2),
        "ours_GFLOP_per_s": round(achieved / 1e9, 1),
        "matmul_GFLOP_per_s": round(matmul_rate / 1e9, 1),
        "fraction_of_matmul_rate": round(achieved / matmul_rate, 2),
        "icfg_projected_h_ours": round(ICFG_PAIRS * per_pair_ours / 3600, 2),
        "icfg_projected_h_authors": round(ICFG_PAIRS * per_pair_authors / 3600, 2),
        "authors_GFLOP_per_pair": round(authors_flops / K / 1e9, 2),
        "ours_GFLOP_per_pair": round(ours_flops / (IMAGES * PAIRS_PER_IMAGE) / 1e9, 2),
    }
    benchmark.extra_info.update(info)
    print(f"\n{name} {precision} {info}")
    benchmark.pedantic(lambda: None, rounds=1)  # the timings above are the measurement
    speedup, rate = GOALS[name]
    assert per_pair_authors / per_pair_ours >= speedup, info
    assert achieved / matmul_rate >= rate, info
