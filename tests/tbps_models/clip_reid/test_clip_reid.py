"""IRRA-family checkpoints against the outputs of the authors' own code (tests/fixtures/*_reference)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.metrics import evaluate_scores
from tbps_bench.results import load_result
from tbps_models.clip_reid import load_checkpoint

from paths import FIXTURES

IRRA = FIXTURES / "irra_reference" / "irra_checkpoint.pth"
RDE = FIXTURES / "rde_reference" / "rde_checkpoint.pth"
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
TOLERANCE = 1e-4  # x max|reference|, as the references' READMEs state


def _reference(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}_reference" / "reference.pt", weights_only=True)


def _pixels(reference: dict) -> torch.Tensor:
    return (reference["pixels"].float() / 255 - MEAN) / STD


def _close(mine: torch.Tensor, reference: torch.Tensor) -> float:
    return float((mine.float() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize(("name", "path"), [("irra", IRRA), ("rde", RDE)])
def test_tokens_equal_the_authors(name, path):
    reference = _reference(name)
    assert torch.equal(load_checkpoint(path, family=name).tokenize(reference["captions"]), reference["tokens"])


def test_long_captions_keep_77_tokens_and_end_with_the_end_token():
    model = load_checkpoint(IRRA, family="irra")
    from tbps_models.clip_towers.tokenizer import tokenize

    tokens = tokenize(["a woman in a long red coat " * 20, "she is walking"])
    assert tokens["truncated"].tolist() == [True, False]
    assert tokens["ids"][0, 0] == 49406 and tokens["ids"][0, -1] == 49407 and bool((tokens["ids"][0] != 0).all())
    assert torch.equal(model.tokenize(["she is walking"])[0], tokens["ids"][1])


def test_irra_embeddings_and_similarity_equal_the_authors():
    reference = _reference("irra")
    model = load_checkpoint(IRRA, family="irra")
    with torch.no_grad():
        images = model.image_features(_pixels(reference))["bge"]
        texts = model.text_features(model.tokenize(reference["captions"]))["bge"]
        similarity = model.similarity(_pixels(reference), reference["captions"])
    assert _close(images, reference["image_embeddings"]) <= TOLERANCE
    assert _close(texts, reference["text_embeddings"]) <= TOLERANCE
    assert _close(similarity, reference["similarity"]) <= TOLERANCE
    assert model.architecture.grid == (24, 8) and model.architecture.stride == 16
    assert model.ignored["classifier"] == 2 and "mlm_head" in model.ignored


@pytest.mark.parametrize("embedding", ["both", "bge", "tse"])
def test_rde_embeddings_and_similarities_equal_the_authors(embedding):
    reference = _reference("rde")
    model = load_checkpoint(RDE, family="auto", select_ratio=float(reference["select_ratio"]), embedding=embedding)
    assert model.family == "rde"
    with torch.no_grad():
        images = model.image_features(_pixels(reference))
        texts = model.text_features(model.tokenize(reference["captions"]))
        similarity = model.similarity(_pixels(reference), reference["captions"])
    for kind in images:
        assert _close(images[kind], reference[f"image_{kind}"]) <= TOLERANCE, kind
        assert _close(texts[kind], reference[f"text_{kind}"]) <= TOLERANCE, kind
    key = "similarity" if embedding == "both" else f"similarity_{embedding}"
    assert _close(similarity, reference[key]) <= TOLERANCE


def test_another_select_ratio_changes_the_tse_score():
    reference = _reference("rde")
    model = load_checkpoint(RDE, family="rde", select_ratio=0.6, embedding="tse")
    assert _close(model.similarity(_pixels(reference), reference["captions"]), reference["similarity_tse"]) > 1e-3


def _tiny_cuhk(root: Path, reference: dict) -> Path:
    """The reference pixels as PNG files in a CUHK-PEDES-format test split, captions in reference order."""
    n_images, n_captions = len(reference["pixels"]), len(reference["captions"])
    per_image = [list(range(i, n_captions, n_images)) for i in range(n_images)]
    order = [c for captions in per_image for c in captions]
    (root / "imgs").mkdir(parents=True)
    records = []
    for index, pixels in enumerate(reference["pixels"]):
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(root / "imgs" / f"{index}.png")
        records.append(
            {
                "split": "test",
                "id": index // 2 + 1,  # two images per person
                "file_path": f"{index}.png",
                "captions": [reference["captions"][c] for c in per_image[index]],
            }
        )
    (root / "reid_raw.json").write_text(json.dumps(records))
    return torch.tensor(order)


@pytest.mark.parametrize(("name", "path"), [("irra", IRRA), ("rde", RDE)])
def test_end_to_end_ranks_equal_those_of_the_reference_similarity(tmp_path, name, path):
    reference = _reference(name)
    order = _tiny_cuhk(tmp_path / "CUHK-PEDES", reference)
    out = tmp_path / "res"
    args = ["eval", "-m", name, "-d", "cuhk-pedes", "--data-root", str(tmp_path), "--checkpoint", str(path)]
    assert main([*args, "--out", str(out), "--method-arg", "trained_on=cuhk-pedes"]) == 0
    result = load_result(next(out.rglob("*.json")))
    image_pids = torch.arange(len(reference["pixels"])) // 2 + 1
    caption_pids = image_pids[order % len(reference["pixels"])]  # caption c describes image c mod n
    expected = evaluate_scores(reference["similarity"][order], caption_pids, image_pids)
    assert result["per_query"]["t2i_first_hit_rank"] == expected.t2i.first_hit_rank.tolist()
    assert result["per_query"]["i2t_first_hit_rank"] == expected.i2t.first_hit_rank.tolist()
    assert result["method"]["trained_on"] == "cuhk-pedes"
    assert (
        result["method"]["checkpoint"]["sha256"]
        == json.loads((path.parent / "summary.json").read_text())["checkpoint_sha256"]
    )


def test_features_are_cached_and_bf16_runs(tmp_path, capsys):
    reference = _reference("irra")
    _tiny_cuhk(tmp_path / "CUHK-PEDES", reference)
    base = ["eval", "-m", "irra", "-d", "cuhk-pedes", "--data-root", str(tmp_path), "--checkpoint", str(IRRA)]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    second = load_result(next((tmp_path / "b").rglob("*.json")))
    assert second["timings"]["cache_hits"] == {"images": True, "texts": True}
    assert main([*base, "--out", str(tmp_path / "c"), "--amp", "bf16"]) == 0
    bf16 = load_result(next((tmp_path / "c").rglob("*.json")))
    assert bf16["protocol"]["amp"] == "bf16" and bf16["timings"]["cache_hits"] == {"images": False, "texts": False}
    assert "ignored training-only entries classifier (2)" in capsys.readouterr().err


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _irra_state() -> dict[str, torch.Tensor]:
    return torch.load(IRRA, weights_only=True)["model"]


def test_a_classifier_sized_for_another_dataset_and_a_module_prefix_still_load(tmp_path):
    state = {f"module.{k}": v for k, v in _irra_state().items()}
    state["module.classifier.weight"] = torch.zeros(3701, 64, dtype=torch.float16)  # ICFG-PEDES ids
    state["module.classifier.bias"] = torch.zeros(3701, dtype=torch.float16)
    model = load_checkpoint(_save(tmp_path / "other.pth", {"model": state}), family="auto")
    reference = _reference("irra")
    assert model.family == "irra" and model.ignored["classifier"] == 2
    assert _close(model.similarity(_pixels(reference), reference["captions"]), reference["similarity"]) <= TOLERANCE


def _bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    state = _irra_state()
    wrong_grid = dict(state)
    wrong_grid["base_model.visual.positional_embedding"] = torch.zeros(150, 128)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(IRRA.read_bytes()[:100_000])

    pickled = _save(tmp_path / "pickled.pth", {"model": state, "args": argparse.Namespace(lr=1e-5)})
    return {
        "nafs": (_save(tmp_path / "nafs.pth", {"network": {}, "W": torch.zeros(2)}), "a NAFS release checkpoint"),
        "unknown": (_save(tmp_path / "unknown.pth", {"model": {"encoder.w": torch.zeros(2)}}), "no 'base_model.*'"),
        "truncated": (truncated, "cannot be read (truncated or not a torch file)"),
        "pickled": (pickled, "holds pickled Python objects"),
        "grid": (_save(tmp_path / "grid.pth", {"model": wrong_grid}), "has 149 patch rows, which matches no stride"),
    }


@pytest.mark.parametrize("case", ["nafs", "unknown", "truncated", "pickled", "grid"])
def test_bad_checkpoints_are_one_line_and_write_nothing(tmp_path, capsys, case):
    path, message = _bad_checkpoints(tmp_path)[case]
    out = tmp_path / "res"
    args = ["eval", "-m", "irra", "-d", "toy-pedes", "--limit", "8", "--checkpoint", str(path), "--out", str(out)]
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and message in err[0] and str(path) in err[0]
    assert not out.exists() or not list(out.rglob("*.json"))


def test_rde_on_an_irra_file_and_irra_on_an_rde_file_are_refused():
    with pytest.raises(BenchError, match="no RDE token-selection layers"):
        load_checkpoint(IRRA, family="rde")
    with pytest.raises(BenchError, match="is an RDE checkpoint"):
        load_checkpoint(RDE, family="irra")


def test_trained_on_must_name_a_dataset(tmp_path, capsys):
    args = ["eval", "-m", "irra", "-d", "toy-pedes", "--limit", "8", "--checkpoint", str(IRRA)]
    assert main([*args, "--out", str(tmp_path), "--method-arg", "trained_on=cuhk-pedez"]) == 1
    assert "did you mean 'cuhk-pedes'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("ratio", "message"),
    [(0.0, "a number in (0, 1]"), (-1, "a number in (0, 1]"), (True, "a number"), (1e-6, "selects no token")],
)
def test_rde_select_ratio_is_validated_in_one_line(tmp_path, capsys, ratio, message):
    out = tmp_path / "res"
    args = ["eval", "-m", "rde", "-d", "toy-pedes", "--limit", "8", "--checkpoint", str(RDE), "--out", str(out)]
    assert main([*args, "--method-arg", f"select_ratio={json.dumps(ratio)}"]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists() or not list(out.rglob("*.json"))


def test_integer_weights_are_refused_not_cast(tmp_path):
    stored = torch.load(IRRA, weights_only=True)
    key = next(k for k, v in stored["model"].items() if v.is_floating_point() and v.dim() == 2)
    stored["model"][key] = stored["model"][key].to(torch.int8)
    torch.save(stored, tmp_path / "int8.pth")
    with pytest.raises(BenchError, match=f"'{key.removeprefix('module.')}' is torch.int8; expected floating-point"):
        load_checkpoint(tmp_path / "int8.pth", family="irra")


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (IRRA, lambda m: m.pop("base_model.transformer.resblocks.1.ln_2.weight"), "CLIP weights missing: "),
        (
            IRRA,
            lambda m: m.__setitem__("base_model.transformer.resblocks.0.attn.lora_B.weight", torch.zeros(2)),
            "unknown entries inside the CLIP towers: 'base_model.transformer.resblocks.0.attn.lora_B.weight'",
        ),
        (IRRA, lambda m: m.__setitem__("base_model.prompt.ctx", torch.zeros(4, 8)), "'base_model.prompt.ctx'"),
        (IRRA, lambda m: m.__setitem__("adapter.down.weight", torch.zeros(2)), r"modules IRRA does not have: adapter"),
        (RDE, lambda m: m.__setitem__("visul_emb_layer.lora.weight", torch.zeros(2)), "inside visul_emb_layer"),
        (RDE, lambda m: m.pop("texual_emb_layer.mlp.layers.1.bias"), "missing out.bias"),
    ],
)
def test_the_loader_names_what_is_missing_or_unknown_and_drops_nothing(tmp_path, path, change, message):
    """A missing weight is named as missing (the file's own name), an entry inside the towers that
    CLIP does not have is named as unknown, and a module beside them is refused, not dropped."""
    stored = torch.load(path, weights_only=True)
    change(stored["model"])
    with pytest.raises(BenchError, match=message) as raised:
        load_checkpoint(_save(tmp_path / "changed.pth", stored), family="auto")
    if "missing" in message and path == IRRA:
        assert "'base_model.transformer.resblocks.1.ln_2.weight'" in str(raised.value)
        assert "unexpected" not in str(raised.value)
