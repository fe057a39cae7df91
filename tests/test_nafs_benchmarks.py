"""The NAFS pairwise scorer beside the released per-text loop and the machine's matmul rate.

A block of 200 images x 400 texts, d = 768, R = 6, L = 101, text lengths 20..45. Useful work is
2 * R * n * d multiply-adds per pair (queries x keys and values x text values, true lengths n).
Run: ``pytest tests/test_nafs_benchmarks.py -m heavy --benchmark-enable``.
"""

from __future__ import annotations

import pytest
import torch

from tbps_models.nafs.scoring import local_similarity

from nafs_reference_scoring import local_similarity_official_loop

IMAGES, TEXTS, REGIONS, LENGTH, DIM = 200, 400, 6, 101, 768


def block(n_images=IMAGES, n_texts=TEXTS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    queries, values = (torch.randn(n_images, REGIONS, DIM, generator=generator) for _ in range(2))
    keys, text_values = (torch.randn(n_texts, LENGTH, DIM, generator=generator) for _ in range(2))
    lengths = torch.randint(20, 46, (n_texts,), generator=generator)
    return queries, values, keys, text_values, lengths


def useful_multiply_adds(problem) -> float:
    return 2.0 * REGIONS * DIM * float(problem[4].sum()) * problem[0].shape[0]


def batched(*problem):
    with torch.inference_mode():
        return local_similarity(*problem)


def official_loop(*problem):
    with torch.inference_mode():
        return local_similarity_official_loop(*problem)


def test_small_block_agrees_with_the_loop():
    problem = block(n_images=20, n_texts=30)
    fast, loop = batched(*problem), official_loop(*problem)
    assert float((fast - loop).abs().max() / loop.abs().max()) <= 1e-5


@pytest.fixture(scope="module")
def full_block():
    return block()


@pytest.mark.heavy
@pytest.mark.benchmark(group="nafs-pairwise-200x400")
@pytest.mark.parametrize("name", ["batched", "official-loop", "matmul-rate"])
def test_pairwise_scoring_speed(benchmark, full_block, name):
    work = useful_multiply_adds(full_block)
    if name == "matmul-rate":
        # the machine's fp32 rate: a large square product (2048^3 multiply-adds)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        benchmark.pedantic(torch.mm, args=(a, b), rounds=10, iterations=1, warmup_rounds=2)
        work = 2048.0**3
    else:
        function = batched if name == "batched" else official_loop
        rounds = 5 if name == "batched" else 2
        benchmark.pedantic(function, args=full_block, rounds=rounds, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    benchmark.extra_info["useful_GMAC_per_s"] = round(work / seconds / 1e9, 2)
    benchmark.extra_info["pairs_per_s"] = round(IMAGES * TEXTS / seconds)
    print(f"\n{name}: {seconds:.3f} s, {work / seconds / 1e9:.1f} GMAC/s")
