"""PLOT's pairwise score at the real width: tbps-bench's one matrix product of stored vectors against
the authors' formulation (one product per slot, then the weighted sum) and a per-pair loop, on the
same random features. Run: ``pytest tests/tbps_models/plot/test_benchmarks.py -m heavy -n 0 --benchmark-enable -s``.
"""

from __future__ import annotations

import time

import pytest
import torch

from tbps_models.plot.model import PlotModel

SLOTS, WIDTH = 8, 512
TEXTS, IMAGES = 2048, 1024
LOOP_TEXTS, LOOP_IMAGES = 32, 16  # the per-pair loop runs on a corner of the same inputs


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def features():
    generator = torch.Generator().manual_seed(0)
    texts = {
        "global": torch.randn(TEXTS, WIDTH, generator=generator),
        "slots": torch.randn(TEXTS, SLOTS, WIDTH, generator=generator),
        "slot_logits": torch.randn(TEXTS, SLOTS, generator=generator),
    }
    images = {
        "global": torch.randn(IMAGES, WIDTH, generator=generator),
        "slots": torch.randn(IMAGES, SLOTS, WIDTH, generator=generator),
    }
    return texts, images


def _per_slot(texts, images) -> torch.Tensor:
    """The authors' evaluator: one product per slot, then the weighted sum."""
    unit = torch.nn.functional.normalize
    scores = unit(texts["global"], dim=1) @ unit(images["global"], dim=1).T
    weights = PlotModel.slot_weights(texts["slot_logits"])
    text_slots, image_slots = _unit(texts["slots"]), _unit(images["slots"])
    for s in range(SLOTS):
        scores += weights[:, s : s + 1] * (text_slots[:, s] @ image_slots[:, s].T)
    return scores


def _per_pair(texts, images, n_texts: int, n_images: int) -> torch.Tensor:
    out = torch.empty(n_texts, n_images)
    weights = PlotModel.slot_weights(texts["slot_logits"])
    for t in range(n_texts):
        for i in range(n_images):
            total = torch.nn.functional.cosine_similarity(texts["global"][t], images["global"][i], dim=0)
            parts = (_unit(texts["slots"][t]) * _unit(images["slots"][i])).sum(-1)
            out[t, i] = total + (weights[t] * parts).sum()
    return out


@pytest.mark.heavy
def test_matrix_product_scorer_against_the_authors_and_a_per_pair_loop(features):
    texts, images = features
    text_vectors, image_vectors = PlotModel.text_vector(texts), PlotModel.image_vector(images)

    def timed(function, repeats: int) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            best = min(best, time.perf_counter() - start)
        return best

    ours = text_vectors @ image_vectors.T
    authors = _per_slot(texts, images)
    loop = _per_pair(texts, images, LOOP_TEXTS, LOOP_IMAGES)
    assert float((ours - authors).abs().max()) <= 1e-4
    assert float((ours[:LOOP_TEXTS, :LOOP_IMAGES] - loop).abs().max()) <= 1e-4

    pairs = TEXTS * IMAGES
    square = torch.randn(2048, 2048), torch.randn(2048, 2048)
    timed(lambda: image_vectors @ text_vectors.T, 2)  # warm-up
    ours_s = timed(lambda: image_vectors @ text_vectors.T, 10)  # what score_pairs computes
    authors_s = timed(lambda: _per_slot(texts, images), 10)
    floor_s = timed(lambda: square[0] @ square[1], 10)
    loop_s = timed(lambda: _per_pair(texts, images, LOOP_TEXTS, LOOP_IMAGES), 2) * pairs / (LOOP_TEXTS * LOOP_IMAGES)
    rate, floor_rate = 2.0 * pairs * text_vectors.shape[1] / ours_s, 2.0 * 2048**3 / floor_s
    print(
        f"\nPLOT scoring, {TEXTS} x {IMAGES} pairs, {torch.get_num_threads()} threads: "
        f"one product {ours_s * 1e3:.1f} ms ({rate / 1e9:.0f} GFLOP/s, {rate / floor_rate:.2f} of the 2048^3 "
        f"matmul rate {floor_rate / 1e9:.0f}), per slot (authors) {authors_s * 1e3:.1f} ms "
        f"({authors_s / ours_s:.2f}x), per-pair loop {loop_s:.1f} s extrapolated ({loop_s / ours_s:.0f}x)"
    )
    assert loop_s / ours_s > 100
    assert rate >= 0.6 * floor_rate
    assert ours_s <= 1.5 * authors_s
