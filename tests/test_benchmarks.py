"""Metric benchmarks: the chunked exact kernel beside the naive full-argsort and the bare floor.

Run with ``pytest tests/test_benchmarks.py --benchmark-enable`` (CUHK-PEDES size) and
``-m heavy --benchmark-enable`` (ICFG-PEDES size, with peak memory measured in a child process).
"""

import multiprocessing
import re

import pytest
import torch

from tbps_bench import evaluate_embeddings

from reference_metrics import naive_full_argsort


def synthetic(n_text: int, n_image: int, n_ids: int = 1000, dim: int = 512, noise: float = 3.0, seed: int = 0):
    """Clustered embeddings with a realistic difficulty (R@1 about 50 % at ICFG-PEDES size)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=generator)
    image_ids = torch.arange(n_image) % n_ids
    text_ids = torch.arange(n_text) % n_ids
    image = centres[image_ids] + noise * torch.randn(n_image, dim, generator=generator)
    text = centres[text_ids] + noise * torch.randn(n_text, dim, generator=generator)
    norm = torch.nn.functional.normalize
    return norm(text, dim=1), norm(image, dim=1), text_ids, image_ids


def floor(text, image, text_ids, image_ids):
    """What any evaluation must at least do: both score matrices and a top-10 per row."""
    for queries, gallery in ((text, image), (image, text)):
        scores = queries @ gallery.T
        scores.topk(10, dim=1)
        del scores


def ours(text, image, text_ids, image_ids):
    return evaluate_embeddings(text, image, text_ids, image_ids).summary()


@pytest.fixture(scope="module")
def cuhk_sized():
    return synthetic(6156, 3074)


@pytest.mark.heavy
@pytest.mark.benchmark(group="metrics-cuhk-size")
@pytest.mark.parametrize("implementation", [ours, naive_full_argsort, floor], ids=["ours", "naive-argsort", "floor"])
def test_metrics_cuhk_size(benchmark, cuhk_sized, implementation):
    ours(*cuhk_sized)  # compile the kernel outside the timing
    result = benchmark.pedantic(implementation, args=cuhk_sized, rounds=3, iterations=1)
    if implementation is naive_full_argsort:
        mine = ours(*cuhk_sized)
        for direction in ("t2i", "i2t"):
            for name, value in result[direction].items():
                assert mine[direction][name] == pytest.approx(value, abs=1e-3)


def _peak_extra_bytes(implementation_name, sizes, queue):
    problem = synthetic(*sizes)
    ours(*(t[:64] for t in problem[:2]), problem[2][:64], problem[3][:64])  # load lazy modules first
    with open("/proc/self/status") as handle:
        before = int(re.search(r"VmRSS:\s+(\d+)", handle.read()).group(1))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter
    IMPLEMENTATIONS[implementation_name](*problem)
    with open("/proc/self/status") as handle:
        peak = int(re.search(r"VmHWM:\s+(\d+)", handle.read()).group(1))
    queue.put((peak - before) * 1024)


def peak_extra_memory(implementation_name: str, sizes: tuple[int, int]) -> int:
    """Peak resident memory beyond the embeddings, measured in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_extra_bytes, args=(implementation_name, sizes, queue))
    child.start()
    extra = queue.get(timeout=1800)
    child.join()
    return extra


IMPLEMENTATIONS = {"ours": ours, "floor": floor}


@pytest.fixture(scope="module")
def icfg_sized():
    return synthetic(19848, 19848)


@pytest.mark.heavy
@pytest.mark.benchmark(group="metrics-icfg-size")
@pytest.mark.parametrize("name", ["ours", "floor"])
def test_metrics_icfg_size(benchmark, icfg_sized, name):
    ours(*icfg_sized)  # warm-up: compile the kernel
    benchmark.pedantic(IMPLEMENTATIONS[name], args=icfg_sized, rounds=3, iterations=1)
    extra = peak_extra_memory(name, (19848, 19848))
    benchmark.extra_info["peak_extra_MiB"] = round(extra / 2**20)
    print(f"\npeak extra memory {name}: {extra / 2**20:.0f} MiB")
