"""CUHK-PEDES-sized costs of exactness: the image manifest in every feature-cache key, and ``data
check`` decoding every image.
Run: ``pytest tests/tbps_datasets/test_benchmarks.py -m heavy -n 0 --benchmark-enable -s``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tbps_bench.splits import EvalSplit

CUHK_IMAGES = 40206


def _split(root: Path, paths: list[str]) -> EvalSplit:
    return EvalSplit(
        dataset="cuhk-sized",
        split="all",
        image_root=root,
        image_paths=paths,
        image_pids=torch.zeros(len(paths), dtype=torch.int64),
        captions=[],
        caption_pids=torch.zeros(0, dtype=torch.int64),
        caption_image=torch.zeros(0, dtype=torch.int64),
        annotation_sha256="",
    )


@pytest.fixture(scope="module")
def cuhk_sized_images(tmp_path_factory) -> tuple[Path, list[str]]:
    """40,206 JPEGs of CUHK-PEDES's typical size (about 80 x 200), in CUHK's folder layout."""
    root = tmp_path_factory.mktemp("cuhk") / "imgs"
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 255, (200, 80, 3), dtype=np.uint8)) for _ in range(16)]
    paths = []
    for index in range(CUHK_IMAGES):
        relative = f"train_query/p{index // 4}/{index}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        tiles[index % 16].save(root / relative, quality=90)
        paths.append(relative)
    return root, paths


@pytest.mark.heavy
@pytest.mark.benchmark(group="cuhk-sized-images")
def test_image_manifest_of_a_cache_key(benchmark, cuhk_sized_images):
    """Stat calls for all 40,206 files, against decoding them (the least a cache miss costs), in the
    same run: at least 5x cheaper; and a file whose modification time changes changes the key."""
    from tbps_bench.encoding import read_image

    root, paths = cuhk_sized_images
    split = _split(root, paths)
    digest = benchmark.pedantic(split.image_manifest_sha256, rounds=5, iterations=1)
    manifest_s = benchmark.stats.stats.min
    sample = 4000  # decoding is timed on a tenth of the files and scaled to all of them
    start = time.perf_counter()
    for index in range(sample):
        read_image(split, index, lambda image: image.load())
    decode_s = (time.perf_counter() - start) * len(paths) / sample
    benchmark.extra_info["decode_all_s_estimated"] = round(decode_s, 2)
    assert manifest_s * 5 <= decode_s, (manifest_s, decode_s)
    stat = os.stat(root / paths[-1])
    os.utime(root / paths[-1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert split.image_manifest_sha256() != digest


@pytest.mark.heavy
@pytest.mark.benchmark(group="cuhk-sized-images")
@pytest.mark.parametrize(("quick", "workers"), [(False, 2), (False, 1), (True, 1)], ids=["full-2", "full-1", "quick"])
def test_data_check_images(benchmark, cuhk_sized_images, quick, workers):
    from tbps_datasets.check import _inspect_images

    root, paths = cuhk_sized_images
    found = benchmark.pedantic(lambda: list(_inspect_images(root, paths, quick, workers)), rounds=1, iterations=1)
    assert len(found) == CUHK_IMAGES and {status for _, status in found} == {"ok"}
    benchmark.extra_info["images_per_s"] = round(CUHK_IMAGES / benchmark.stats.stats.min)
