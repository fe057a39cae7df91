"""CUDA paths, run where a GPU is present (``pytest -m cuda``, and by ``scripts/gpu_check.py``).

Without a CUDA device these are skipped: the machine cannot run them, which says nothing about the code.
"""

from __future__ import annotations

import pytest
import torch

from tbps_bench import evaluate_embeddings
from tbps_bench.cli import main

from paths import FIXTURES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_metrics_on_the_gpu_equal_the_cpu(clustered_embeddings):
    text, image, text_ids, image_ids = clustered_embeddings(noise=1.5)
    cpu = evaluate_embeddings(text, image, text_ids, image_ids)
    gpu = evaluate_embeddings(text.cuda(), image.cuda(), text_ids, image_ids)
    for direction in ("t2i", "i2t"):
        assert torch.equal(getattr(cpu, direction).first_hit_rank, getattr(gpu, direction).first_hit_rank)


def test_nafs_scorer_on_the_gpu_equals_the_cpu():
    from tbps_models.nafs.scoring import local_similarity

    generator = torch.Generator().manual_seed(0)
    problem = [torch.randn(12, 6, 64, generator=generator) for _ in range(2)]
    problem += [torch.randn(20, 30, 64, generator=generator) for _ in range(2)]
    problem.append(torch.randint(5, 31, (20,), generator=generator))
    cpu = local_similarity(*problem)
    gpu = local_similarity(*(t.cuda() for t in problem)).cpu()
    assert float((gpu - cpu).abs().max() / cpu.abs().max()) <= 1e-4


def test_irra_reference_on_the_gpu():
    from tbps_models.clip_reid import load_checkpoint

    reference = torch.load(FIXTURES / "irra_reference" / "reference.pt", weights_only=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    model = load_checkpoint(FIXTURES / "irra_reference" / "irra_checkpoint.pth", family="irra").cuda()
    similarity = model.similarity(((reference["pixels"].float() / 255 - mean) / std).cuda(), reference["captions"])
    assert float((similarity.cpu() - reference["similarity"]).abs().max() / reference["similarity"].abs().max()) <= 1e-3


def test_a_training_step_and_an_evaluation_on_the_gpu(tmp_path):
    args = ["train", "-m", "nafs-tiny", "-d", "toy-pedes", "--device", "cuda", "--amp", "bf16", "--epochs", "1"]
    assert main([*args, "--max-steps", "2", "--select-on", "last", "--out", str(tmp_path / "runs")]) == 0
    best = tmp_path / "runs" / "nafs-tiny" / "toy-pedes" / "seed0" / "best"
    evaluate = ["eval", "-m", "nafs-tiny", "-d", "toy-pedes", "--device", "cuda", "--checkpoint", str(best)]
    assert main([*evaluate, "--limit", "40", "--out", str(tmp_path / "res")]) == 0
