"""Metric benchmarks: the chunked exact kernel beside the naive full-argsort and the bare floor.

Run with ``pytest tests/tbps_bench/metrics/test_benchmarks.py -m heavy -n 0 --benchmark-enable -s``.
The ratio test times the first call in a fresh process (every one-time cost included) and a second,
warm call, each beside the floor in its own fresh process, and asserts the ratios.
"""

import multiprocessing
import re

import pytest
import torch

from tbps_bench import evaluate_embeddings
from tbps_bench.metrics.definition import naive_full_argsort


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
    ours(*cuhk_sized)  # warm-up
    result = benchmark.pedantic(implementation, args=cuhk_sized, rounds=3, iterations=1)
    if implementation is naive_full_argsort:
        mine = ours(*cuhk_sized)
        for direction in ("t2i", "i2t"):
            for name, value in result[direction].items():
                assert mine[direction][name] == pytest.approx(value, abs=1e-3)


def _fresh_run(name: str, sizes: tuple[int, int], calls: int, queue) -> None:
    """In a fresh interpreter: the problem, then ``calls`` timed calls and the peak memory beyond the
    problem (the first call pays every one-time cost, as a user's first evaluation does)."""
    import time

    problem = synthetic(*sizes)
    with open("/proc/self/status") as handle:
        before = int(re.search(r"VmRSS:\s+(\d+)", handle.read()).group(1))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        IMPLEMENTATIONS[name](*problem)
        seconds.append(time.perf_counter() - start)
    with open("/proc/self/status") as handle:
        peak = int(re.search(r"VmHWM:\s+(\d+)", handle.read()).group(1))
    queue.put({"seconds": seconds, "peak_extra_bytes": (peak - before) * 1024})


def fresh_process(name: str, sizes: tuple[int, int], calls: int = 3) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_fresh_run, args=(name, sizes, calls, queue))
    child.start()
    measured = queue.get(timeout=1800)
    child.join()
    return measured


IMPLEMENTATIONS = {"ours": ours, "floor": floor}


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("sizes", "first_limit", "warm_limit"),
    [((6156, 3074), 1.5, 1.5), ((19848, 19848), 1.5, 1.2)],
    ids=["cuhk-size", "icfg-size"],
)
def test_metrics_against_the_floor_in_fresh_processes(benchmark, sizes, first_limit, warm_limit):
    """Both directions, all five metrics, against the floor measured in the same run."""
    floor_run = fresh_process("floor", sizes)
    ours_run = benchmark.pedantic(fresh_process, args=("ours", sizes), rounds=1, iterations=1)
    floor_seconds = min(floor_run["seconds"])
    first, warm = ours_run["seconds"][0], min(ours_run["seconds"][1:])
    benchmark.extra_info.update(
        floor_s=round(floor_seconds, 3),
        ours_first_s=round(first, 3),
        ours_warm_s=round(warm, 3),
        first_ratio=round(first / floor_seconds, 2),
        warm_ratio=round(warm / floor_seconds, 2),
        floor_peak_extra_MiB=round(floor_run["peak_extra_bytes"] / 2**20),
        ours_peak_extra_MiB=round(ours_run["peak_extra_bytes"] / 2**20),
    )
    print(f"\n{sizes}: {benchmark.extra_info}")
    assert first / floor_seconds <= first_limit
    assert warm / floor_seconds <= warm_limit
    assert ours_run["peak_extra_bytes"] <= 2**30
