"""TBPS-CLIP's released checkpoints against the outputs of the authors' own code
(tests/fixtures/tbps_clip_reference), full and simplified variants."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.results import load_result
from tbps_models.clip_towers.preset import NORMALIZATION
from tbps_models.tbps_clip.captions import clean_caption
from tbps_models.tbps_clip.model import TBPS_CLIP_PRESET, load_tbps_clip, read_file

from paths import FIXTURES
from reference_checks import assert_resized_like_the_authors, relative_to_max

FOLDER = FIXTURES / "tbps_clip_reference"
CHECKPOINT = FOLDER / "tbps_clip_checkpoint.pth"
SUMMARY = json.loads((FOLDER / "summary.json").read_text())
REFERENCE = torch.load(FOLDER / "reference.pt", weights_only=True)
TOLERANCE = 1e-4  # x max|reference|, as the reference's README states


def _pixels() -> torch.Tensor:
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION["imagenet"])
    return (REFERENCE["pixels"].float() / 255 - mean) / std


def _similarity(model) -> torch.Tensor:
    with torch.no_grad():
        texts = model.towers.encode_texts(REFERENCE["tokens"])
        images = model.towers.encode_images(_pixels())
    unit = torch.nn.functional.normalize
    return unit(texts, dim=1) @ unit(images, dim=1).T


def test_cleaning_tokens_and_pixels_equal_the_authors():
    assert [clean_caption(c) for c in REFERENCE["captions"]] == REFERENCE["pre_captions"]
    assert torch.equal(TBPS_CLIP_PRESET.tokenize(REFERENCE["captions"], 77)["ids"], REFERENCE["tokens"])
    assert_resized_like_the_authors(TBPS_CLIP_PRESET, FOLDER / "CUHK-PEDES" / "imgs", REFERENCE)


def test_cleaning_rule():
    assert clean_caption("A Man: (tall);  wears~ a  #hat!\n") == "a man tall wears a hat"
    assert clean_caption(" ".join(["word"] * 90)) == " ".join(["word"] * 77)


def test_embeddings_and_similarity_equal_the_authors():
    model = load_tbps_clip(CHECKPOINT)
    assert model.variant == "full"
    assert model.architecture.image_size == (224, 224) and model.architecture.stride == 16
    with torch.no_grad():
        assert relative_to_max(model.towers.encode_images(_pixels()), REFERENCE["image_embeddings"]) <= TOLERANCE
        assert (
            relative_to_max(model.towers.encode_texts(REFERENCE["tokens"]), REFERENCE["text_embeddings"]) <= TOLERANCE
        )
    assert relative_to_max(_similarity(model), REFERENCE["similarity"]) <= TOLERANCE
    # the raw captions tokenize differently: the cleaning is part of the function
    from tbps_models.clip_towers.tokenizer import tokenize

    assert not torch.equal(tokenize(REFERENCE["captions"])["ids"], REFERENCE["tokens"])


def _simplified(tmp_path: Path) -> Path:
    """The full file without the self-supervision head, its config saying so (as the simplified
    variant's training script writes it)."""
    state, config = read_file(CHECKPOINT)
    state = {k: v for k, v in state.items() if not k.startswith("simclr_mlp.")}
    config = json.loads(json.dumps(config))
    for key in ("ss", "citc", "mvs_image"):
        config["experiment"][key] = False
    path = tmp_path / "simplified.pth"
    torch.save({"model": state, "config": collections.OrderedDict(config)}, path)
    return path


def test_the_simplified_variant_loads_and_scores_the_same(tmp_path):
    model = load_tbps_clip(_simplified(tmp_path))
    assert model.variant == "simplified"
    assert relative_to_max(_similarity(model), REFERENCE["similarity"]) <= TOLERANCE


@pytest.mark.parametrize("variant", ["full", "simplified"])
def test_end_to_end_both_directions_equal_the_authors(tmp_path, variant):
    checkpoint = CHECKPOINT if variant == "full" else _simplified(tmp_path)
    out = tmp_path / "res"
    args = ["eval", "-m", "tbps-clip", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(checkpoint)]
    assert main([*args, "--out", str(out), "--method-arg", "trained_on=cuhk-pedes", "--no-cache"]) == 0
    result = load_result(next(out.rglob("*.json")))
    for direction in ("t2i", "i2t"):
        assert result["per_query"][f"{direction}_first_hit_rank"] == REFERENCE["first_hit_rank"][direction]
        expected = REFERENCE["metrics"][direction]
        for mine, theirs in (("R1", "r1"), ("R5", "r5"), ("R10", "r10"), ("mAP", "mAP")):
            assert abs(result["metrics"][direction][mine] - expected[theirs]) < 1e-3, (direction, mine)
    assert result["method"]["arguments"] == {"trained_on": "cuhk-pedes", "variant": variant}
    preprocessing = result["method"]["preprocessing"]
    assert preprocessing["caption_cleaning"] == "tbps-clip" and preprocessing["resize"] == "bicubic"
    assert preprocessing["image_size"] == [224, 224] and preprocessing["normalize"] == "imagenet"


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_only_the_config_class_is_let_through(tmp_path, capsys):
    """Weights-only loading allows ``easydict.EasyDict`` (rebuilt as a dict) and nothing else."""
    state, _ = read_file(CHECKPOINT)
    path = tmp_path / "hostile.pth"
    torch.save({"model": state, "config": _Payload()}, path)
    with pytest.raises(BenchError, match="holds pickled Python objects"):
        load_tbps_clip(path)
    assert "executed" not in capsys.readouterr().out
    with pytest.raises(pickle.UnpicklingError):
        torch.load(CHECKPOINT, weights_only=True)  # the file does need the one allowance


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("encode_text.ln_final.bias"), "CLIP weights missing: 'encode_text.ln_final.bias'"),
        (lambda m: m.pop("visual.proj"), "CLIP weights missing: 'visual.proj'"),
        (
            lambda m: m.__setitem__("encode_text.prompt", torch.zeros(3)),
            "unknown entries inside the CLIP towers: 'encode_text.prompt'",
        ),
        (lambda m: m.__setitem__("lora.weight", torch.zeros(3)), r"modules TBPS-CLIP does not have: lora \(1\)"),
    ],
)
def test_a_file_that_is_not_what_tbps_clip_runs_is_named(tmp_path, change, message):
    state, config = read_file(CHECKPOINT)
    change(state)
    path = tmp_path / "changed.pth"
    torch.save({"model": state, "config": config}, path)
    with pytest.raises(BenchError, match=message):
        load_tbps_clip(path)


def test_other_methods_files_are_named_both_ways(tmp_path, capsys):
    irra = FIXTURES / "irra_reference" / "irra_checkpoint.pth"
    with pytest.raises(BenchError, match="it is a checkpoint of IRRA: use -m irra"):
        load_tbps_clip(irra)
    state, _ = read_file(CHECKPOINT)
    plain = tmp_path / "plain.pth"
    torch.save({"model": state}, plain)  # without the config object: the weights-only path of -m irra
    args = ["eval", "-m", "irra", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(plain)]
    assert main([*args, "--out", str(tmp_path / "res")]) == 1
    assert "a checkpoint of TBPS-CLIP: use -m tbps-clip" in capsys.readouterr().err
    assert load_tbps_clip(plain).variant == "full"  # no config: the file's heads say which variant
