"""PLOT's released checkpoints against the outputs of the authors' own code (tests/fixtures/plot_reference)."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.results import load_result
from tbps_models.clip_towers.preset import NORMALIZATION
from tbps_models.plot.model import PLOT_PRESET, load_plot

from paths import FIXTURES
from reference_checks import assert_resized_like_the_authors, relative_to_max

FOLDER = FIXTURES / "plot_reference"
SUMMARY = json.loads((FOLDER / "summary.json").read_text())
REFERENCE = torch.load(FOLDER / "reference.pt", weights_only=True)
TOLERANCE = 1e-4  # x max|reference|, as the reference's README states


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The reference checkpoint, decompressed once (it ships as .xz), its sha256 checked."""
    path = tmp_path_factory.mktemp("plot") / "plot_checkpoint.pth"
    path.write_bytes(lzma.decompress((FOLDER / "plot_checkpoint.pth.xz").read_bytes()))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SUMMARY["checkpoint_sha256"]
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_plot(checkpoint)


def _pixels() -> torch.Tensor:
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION["clip"])
    return (REFERENCE["pixels"].float() / 255 - mean) / std


def test_tokens_and_pixels_equal_the_authors():
    assert torch.equal(PLOT_PRESET.tokenize(REFERENCE["captions"], 77)["ids"], REFERENCE["tokens"])
    assert_resized_like_the_authors(PLOT_PRESET, FOLDER / "CUHK-PEDES" / "imgs", REFERENCE)


def test_every_intermediate_output_equals_the_authors(model):
    with torch.no_grad():
        images = model.image_features(_pixels())
        texts = model.text_features(REFERENCE["tokens"])
        weights = model.slot_weights(texts["slot_logits"])
        similarity = model.similarity(_pixels(), REFERENCE["tokens"])
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    part = torch.einsum("tsd,isd->tsi", unit(texts["slots"]), unit(images["slots"]))
    global_similarity = (
        torch.nn.functional.normalize(texts["global"], dim=1) @ torch.nn.functional.normalize(images["global"], dim=1).T
    )
    mine = {
        "image_embeddings": images["global"],
        "text_embeddings": texts["global"],
        "image_slots": images["slots"],
        "text_slots": texts["slots"],
        "slot_logits": texts["slot_logits"],
        "slot_weights": weights,
        "global_similarity": global_similarity,
        "part_similarity": part,
        "similarity": similarity,
    }
    for name, value in mine.items():
        assert relative_to_max(value, REFERENCE[name]) <= TOLERANCE, name
    # the score is the global cosine plus the weighted per-slot cosines
    assert (
        relative_to_max(global_similarity + torch.einsum("tsi,ts->ti", part, weights), REFERENCE["similarity"]) <= 1e-5
    )
    assert model.architecture.text_layers == SUMMARY["config"]["tlayers"]
    assert len(model.backbone.clip.text_model.encoder.layers) == SUMMARY["config"]["tlayers"] - 1


def test_other_iterations_or_the_last_text_block_change_the_score(checkpoint):
    """The two things the file does not say: both matter, so the parity above can fail."""
    three = load_plot(checkpoint, iterations=3)
    assert relative_to_max(three.similarity(_pixels(), REFERENCE["tokens"]), REFERENCE["similarity"]) > 1e-3
    from tbps_models.clip_reid import load_checkpoint

    with pytest.raises(BenchError, match="checkpoint of PLOT, not IRRA-format: use -m plot"):
        load_checkpoint(checkpoint, family="auto")


def test_blockwise_scores_equal_a_per_pair_loop(model):
    """The scorer (one matrix product of stored vectors) against the definition, pair by pair."""
    with torch.no_grad():
        images, texts = model.image_features(_pixels()), model.text_features(REFERENCE["tokens"])
        fast = model.text_vector(texts) @ model.image_vector(images).T
        weights = model.slot_weights(texts["slot_logits"])
        slow = torch.empty_like(fast)
        for t in range(len(fast)):
            for i in range(fast.shape[1]):
                cosine = torch.nn.functional.cosine_similarity
                total = cosine(texts["global"][t], images["global"][i], dim=0)
                for s in range(weights.shape[1]):
                    a, b = texts["slots"][t, s], images["slots"][i, s]
                    total = total + weights[t, s] * (a @ b) / (a.norm() * b.norm())
                slow[t, i] = total
    assert relative_to_max(fast, slow) <= 1e-5


@pytest.mark.parametrize("amp", ["none"])
def test_end_to_end_both_directions_equal_the_authors(tmp_path, checkpoint, amp):
    out = tmp_path / "res"
    args = ["eval", "-m", "plot", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(out), "--method-arg", "trained_on=cuhk-pedes", "--no-cache"]) == 0
    result = load_result(next(out.rglob("*.json")))
    for direction in ("t2i", "i2t"):
        assert result["per_query"][f"{direction}_first_hit_rank"] == REFERENCE["first_hit_rank"][direction]
        for name in ("R1", "R5", "R10", "mAP", "mINP"):
            expected = REFERENCE["metrics"][direction][name]
            assert abs(result["metrics"][direction][name] - expected) < 1e-3, (direction, name)
    assert result["method"]["arguments"] == {"trained_on": "cuhk-pedes", "iterations": 5}
    assert result["protocol"]["scoring"] == "pairwise"
    assert result["method"]["checkpoint"]["sha256"] == SUMMARY["checkpoint_sha256"]


def _saved(tmp_path: Path, checkpoint: Path, change) -> Path:
    stored = torch.load(checkpoint, weights_only=True)
    change(stored["model"])
    path = tmp_path / "changed.pth"
    torch.save(stored, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("base_model.ln_final.bias"), "CLIP weights missing: 'base_model.ln_final.bias'"),
        (
            lambda m: m.__setitem__("base_model.visual.transformer.resblocks.0.lora_A.weight", torch.zeros(4, 64)),
            "unknown entries inside the CLIP towers: 'base_model.visual.transformer.resblocks.0.lora_A.weight'",
        ),
        (
            lambda m: m.__setitem__("prompt_learner.ctx", torch.zeros(4, 512)),
            r"modules PLOT does not have: prompt_learner \(1\)",
        ),
        (
            lambda m: m.__setitem__("slot_attention.adapter.weight", torch.zeros(2, 2)),
            "unexpected slot_attention.adapter.weight",
        ),
        (lambda m: m.pop("slot_attention_t.gru.weight_hh"), "missing slot_attention_t.gru.weight_hh"),
        (
            lambda m: m.__setitem__("slots", m["slots"].to(torch.int8)),
            "'slots' is torch.int8; expected floating-point weights",
        ),
    ],
)
def test_a_file_that_is_not_what_plot_runs_is_named_and_refused(tmp_path, checkpoint, capsys, change, message):
    path = _saved(tmp_path, checkpoint, change)
    with pytest.raises(BenchError, match=message):
        load_plot(path)
    args = ["eval", "-m", "plot", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(path)]
    assert main([*args, "--out", str(tmp_path / "res")]) == 1
    assert capsys.readouterr().err.splitlines()[0].startswith("error: plot on cuhk-pedes: ")
    assert not (tmp_path / "res").exists()


def test_other_methods_files_are_named(tmp_path, checkpoint, capsys):
    irra = FIXTURES / "irra_reference" / "irra_checkpoint.pth"
    with pytest.raises(BenchError, match="it is a checkpoint of IRRA: use -m irra"):
        load_plot(irra)
    args = ["eval", "-m", "irra", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(tmp_path / "res")]) == 1
    assert "use -m plot" in capsys.readouterr().err
    with pytest.raises(BenchError, match=r"iterations must be an integer >= 1; got 0"):
        load_plot(checkpoint, iterations=0)
