"""The precomputed method: another tool's scores or embeddings, ranked as given, checked against the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tbps_bench.cli import main
from tbps_bench.harness import load_eval_split
from tbps_bench.metrics.definition import brute_force
from tbps_bench.results import load_result

LIMIT = 24


def _toy_test_split():
    return load_eval_split("toy-pedes", None, "test").limited(LIMIT)


def _oracle_scores(path: Path) -> Path:
    split = _toy_test_split()
    similarity = (split.caption_pids[:, None] == split.image_pids[None, :]).float().numpy()
    np.savez(path, similarity=similarity, text_ids=split.caption_pids.numpy(), image_ids=split.image_pids.numpy())
    return path


def test_precomputed_scores_and_embeddings(tmp_path):
    scores = _oracle_scores(tmp_path / "scores.npz")
    out = tmp_path / "res"
    base = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--limit", str(LIMIT), "--out", str(out)]
    assert main([*base, "--method-arg", f"file={scores}", "--method-arg", "label=perfect"]) == 0
    result = load_result(next(out.rglob("*.json")))
    assert result["metrics"]["t2i"]["R1"] == 100.0 and result["metrics"]["i2t"]["mAP"] == 100.0
    assert result["method"]["arguments"]["label"] == "perfect"

    split = _toy_test_split()
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, 16, generator=generator)
    embeddings = tmp_path / "emb.safetensors"
    save_file(
        {
            "text_embeddings": centres[split.caption_pids],
            "image_embeddings": centres[split.image_pids],
            "text_ids": split.caption_pids,
            "image_ids": split.image_pids,
        },
        str(embeddings),
    )
    out2 = tmp_path / "res2"
    assert main([*base[:-1], str(out2), "--method-arg", f"file={embeddings}"]) == 0
    assert load_result(next(out2.rglob("*.json")))["metrics"]["t2i"]["R1"] == 100.0


def _first_hits(out: Path) -> dict:
    return load_result(next(out.rglob("*.json")))["per_query"]


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_precomputed_float64_is_ranked_as_given(tmp_path, scale):
    """float64 scores closer than float32 resolves, and float64 embeddings beyond float32's range,
    give the ranks of the float64 values: never ties or infinities made by a cast."""
    split = _toy_test_split()
    generator = torch.Generator().manual_seed(1)
    n_texts, n_images = len(split.caption_pids), len(split.image_pids)
    base = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--limit", str(LIMIT), "--no-cache"]
    close = 0.5 + 1e-12 * torch.randn(n_texts, n_images, generator=generator, dtype=torch.float64)
    scores = tmp_path / "close.npz"
    np.savez(scores, similarity=close.numpy(), text_ids=split.caption_pids.numpy(), image_ids=split.image_pids.numpy())
    assert main([*base, "--out", str(tmp_path / "s"), "--method-arg", f"file={scores}"]) == 0
    expected = brute_force(close, split.caption_pids, split.image_pids)["first"]
    assert _first_hits(tmp_path / "s")["t2i_first_hit_rank"] == expected

    embeddings = {
        "text_embeddings": torch.randn(n_texts, 8, generator=generator, dtype=torch.float64),
        "image_embeddings": torch.randn(n_images, 8, generator=generator, dtype=torch.float64),
    }
    for dtype, factor, out in ((torch.float32, 1.0, "plain"), (torch.float64, scale, "scaled")):
        file = tmp_path / f"{out}.safetensors"
        rows = {key: (value * factor).to(dtype) for key, value in embeddings.items()}
        save_file({**rows, "text_ids": split.caption_pids, "image_ids": split.image_pids}, str(file))
        assert main([*base, "--out", str(tmp_path / out), "--method-arg", f"file={file}"]) == 0
    assert _first_hits(tmp_path / "plain") == _first_hits(tmp_path / "scaled")


@pytest.mark.parametrize("power", [-100, 100])
def test_half_precision_feature_storage_gives_the_fp32_ranks(tmp_path, power):
    """Embeddings far below or above float16's range (small integers times 2**power, exact in every
    storage type once scaled) rank exactly as with fp32 storage; a plain float16 cast would flush them
    to zero (every score tied) or to infinity."""
    split = _toy_test_split()
    generator = torch.Generator().manual_seed(2)
    file = tmp_path / "emb.safetensors"
    rows = {
        f"{kind}_embeddings": torch.randint(-4, 5, (count, 8), generator=generator).float() * 2.0**power
        for kind, count in (("text", len(split.caption_pids)), ("image", len(split.image_pids)))
    }
    save_file({**rows, "text_ids": split.caption_pids, "image_ids": split.image_pids}, str(file))
    base = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--limit", str(LIMIT), "--method-arg", f"file={file}"]
    for dtype in ("fp32", "fp16", "bf16"):
        assert main([*base, "--feature-dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    assert _first_hits(tmp_path / "fp16") == _first_hits(tmp_path / "fp32") == _first_hits(tmp_path / "bf16")


def test_precomputed_with_other_ids_or_counts_is_refused(tmp_path, capsys):
    split = _toy_test_split()
    swapped = split.caption_pids.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]
    bad_ids = tmp_path / "bad_ids.npz"
    n_texts, n_images = len(split.caption_pids), len(split.image_pids)
    np.savez(bad_ids, similarity=np.zeros((n_texts, n_images)), text_ids=swapped.numpy(), image_ids=split.image_pids)
    base = ["eval", "-m", "precomputed", "-d", "toy-pedes", "--limit", str(LIMIT), "--out", str(tmp_path / "r")]
    assert main([*base, "--method-arg", f"file={bad_ids}"]) == 1
    assert "text_ids[0] is" in capsys.readouterr().err
    short = tmp_path / "short.npz"
    np.savez(short, similarity=np.zeros((3, 2)), text_ids=split.caption_pids[:3], image_ids=split.image_pids[:2])
    assert main([*base, "--method-arg", f"file={short}"]) == 1
    assert "rows; the split has more" in capsys.readouterr().err
    missing = tmp_path / "missing.npz"
    np.savez(missing, scores=np.zeros((3, 2)))
    assert main([*base, "--method-arg", f"file={missing}"]) == 1
    assert "lacks ['similarity', 'text_ids', 'image_ids']" in capsys.readouterr().err
    assert not list((tmp_path / "r").rglob("*.json"))
