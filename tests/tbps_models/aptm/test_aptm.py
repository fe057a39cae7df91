"""APTM against the outputs of the authors' own code (tests/fixtures/aptm_reference: a tiny Swin +
BERT with seeded random weights), its one- and four-process fusion included."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.methods import ShortlistScores
from tbps_bench.results import load_result
from tbps_models.albef.tokenizer import CaptionTokenizer
from tbps_models.aptm.checkpoint import load_aptm
from tbps_models.aptm.method import DATASET_STATISTICS, AptmMethod, aptm_pre_caption, fused_rows
from tbps_models.aptm.model import AptmModel

from pair_scores import shortlist_scores
from paths import FIXTURES
from reference_checks import relative_to_max

FOLDER = FIXTURES / "aptm_reference"
CHECKPOINT = FOLDER / "aptm_checkpoint.pth"
TOLERANCE = 1e-4  # x max|reference|, as the reference's README states
REFERENCE = torch.load(FOLDER / "reference.pt", weights_only=True)
SUMMARY = json.loads((FOLDER / "summary.json").read_text())


def _pixels() -> torch.Tensor:
    mean, std, _ = DATASET_STATISTICS["cuhk-pedes"]
    pixels = REFERENCE["pixels_resized"].permute(0, 3, 1, 2).float() / 255
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope="module")
def outputs():
    checkpoint = load_aptm(CHECKPOINT)
    model = AptmModel.from_checkpoint(checkpoint, str(CHECKPOINT))
    with torch.no_grad():
        images = model.image_features(_pixels())
        texts = model.text_features(REFERENCE["input_ids"], REFERENCE["attention_mask"])
    return checkpoint, model, images, texts


def test_captions_and_tokens_equal_the_authors(outputs):
    checkpoint, *_ = outputs
    clean = functools.partial(aptm_pre_caption, max_words=checkpoint.shape.max_words, icfg_rstp=False)
    assert [clean(c) for c in REFERENCE["captions_raw"]] == REFERENCE["captions"]
    tokens = CaptionTokenizer(None, checkpoint.shape.max_tokens, clean)(REFERENCE["captions_raw"])
    assert torch.equal(tokens["ids"], REFERENCE["input_ids"])
    assert torch.equal(tokens["mask"], REFERENCE["attention_mask"])


def test_icfg_rstp_cleaning_is_the_authors_rule():
    assert aptm_pre_caption("A café-bar, RED  coat!", 56, icfg_rstp=True) == "a caf bar red coat"
    assert aptm_pre_caption("A café-bar, RED  coat!", 56, icfg_rstp=False) == "A café-bar, RED  coat!"
    assert aptm_pre_caption("one two  three", 2, icfg_rstp=False) == "one two"
    with pytest.raises(BenchError, match="empty after APTM's cleaning"):
        aptm_pre_caption("!!!", 56, icfg_rstp=True)


def test_the_image_transform_gives_the_authors_resize_bit_for_bit():
    method = AptmMethod(checkpoint=str(CHECKPOINT))
    method.for_dataset("cuhk-pedes")
    transform = method.image_transform()
    root = FOLDER / "CUHK-PEDES" / "imgs"
    files = [record["file_path"] for record in REFERENCE["records"]]
    mine = torch.stack([transform(Image.open(root / name).convert("RGB")) for name in files])
    assert torch.equal(mine, _pixels())


def test_swin_text_and_contrastive_outputs_equal_the_authors(outputs):
    _, _, images, texts = outputs
    assert relative_to_max(images["tokens"], REFERENCE["image_embeds"]) <= TOLERANCE
    assert relative_to_max(texts["states"], REFERENCE["text_embeds"]) <= TOLERANCE
    assert relative_to_max(images["embedding"], REFERENCE["image_feat"]) <= TOLERANCE
    assert relative_to_max(texts["embedding"], REFERENCE["text_feat"]) <= TOLERANCE
    similarity = texts["embedding"] @ images["embedding"].T
    assert relative_to_max(similarity, REFERENCE["itc_sims"]) <= TOLERANCE
    k = REFERENCE["topk_idx"].shape[1]
    for mine, theirs in ((similarity, REFERENCE["topk_idx"]), (similarity.T, REFERENCE["i2t_topk_idx"])):
        chosen = torch.sort(mine, dim=1, descending=True, stable=True).indices[:, :k]
        assert [set(r) for r in chosen.tolist()] == [set(r) for r in theirs.tolist()]


def test_matching_logits_equal_the_authors_in_both_directions(outputs):
    _, model, images, texts = outputs
    for direction, prefix in (("t2i", ""), ("i2t", "i2t_")):
        mine = shortlist_scores(model, images, texts, REFERENCE[f"{prefix}topk_idx"], direction)
        assert relative_to_max(mine, REFERENCE[f"{prefix}itm_topk"]) <= TOLERANCE


@pytest.mark.parametrize("world", [1, 4])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_the_fused_matrices_equal_the_authors_for_one_and_four_processes(direction, world):
    """From the reference's own shortlists and logits: the fusion alone."""
    prefix = "" if direction == "t2i" else "i2t_"
    itc = REFERENCE["itc_sims"] if direction == "t2i" else REFERENCE["itc_sims"].T
    index, second = REFERENCE[f"{prefix}topk_idx"], REFERENCE[f"{prefix}itm_topk"]
    scores = ShortlistScores(direction, index, second, itc.shape[1], float(itc.min()), float(itc.max()))
    mine = fused_rows(scores, slice(0, len(itc)), itc, world)
    theirs = REFERENCE[f"score_{direction}_w{world}"]
    if world == 1:
        assert float((mine - theirs).abs().max()) <= TOLERANCE * float(theirs.max() - theirs.min())
    else:
        assert float((mine - theirs).abs().max()) <= 2e-6
    ranks = torch.sort(mine, dim=1, descending=True, stable=True).indices
    assert torch.equal(ranks, torch.sort(theirs, dim=1, descending=True, stable=True).indices)


def _eval(tmp_path: Path, *method_args: str, extra: tuple[str, ...] = ()) -> dict:
    out = tmp_path / "res"
    args = ["eval", "-m", "aptm", "-d", "cuhk-pedes", "--data-root", str(FOLDER), "--checkpoint", str(CHECKPOINT)]
    for value in method_args:
        args += ["--method-arg", value]
    assert main([*args, *extra, "--out", str(out)]) == 0
    return load_result(next(out.rglob("*.json")))


@pytest.mark.parametrize(
    ("method_args", "world"), [((), 4), (("fusion_world_size=4",), 4), (("fusion_world_size=1",), 1)]
)
def test_end_to_end_first_hit_ranks_equal_the_authors(tmp_path, method_args, world):
    result = _eval(tmp_path, *method_args, extra=("--pair-batch", "7"))
    for direction in ("t2i", "i2t"):
        assert result["per_query"][f"{direction}_first_hit_rank"] == SUMMARY["first_hit_rank"][f"{direction}_w{world}"]
        expected = SUMMARY["metrics"][f"{direction}_w{world}"]
        for name in ("R1", "R5", "R10", "mAP", "mINP"):
            assert abs(result["metrics"][direction][name] - expected[name]) < 1e-3, (direction, name)
    protocol = result["protocol"]
    assert protocol["fusion_world_size"] == world and protocol["shortlist_k"] == 5  # the stored k_test
    assert protocol["rerank"].endswith(f"fused over {world} process{'es' if world > 1 else ''}")
    assert result["method"]["preprocessing"]["normalize"]["statistics"] == "cuhk-pedes"
    assert result["method"]["checkpoint"]["sha256"] == SUMMARY["checkpoint_sha256"]


def test_one_and_four_process_fusion_rank_differently_on_the_reference_set():
    """The property the published protocol hides: the same model, other rankings."""
    differ = SUMMARY["first_hit_rank"]["t2i_w1"] != SUMMARY["first_hit_rank"]["t2i_w4"]
    assert differ  # the fixture shows it; the end-to-end test above reproduces both


def test_timm_swin_cannot_take_the_released_tables():
    """Why APTM's Swin is a module of this project: timm's, at 384 x 128 with window 8, builds
    stage 4 (12 x 4) with 8 x 4 windows, whose bias table is not the 4 x 4 table APTM stores."""
    from timm.models.swin_transformer import SwinTransformer

    timm_swin = SwinTransformer(
        img_size=(384, 128), embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=8
    )
    table = next(v for k, v in timm_swin.state_dict().items() if k.startswith("layers.3.") and k.endswith("bias_table"))
    stored = torch.load(CHECKPOINT, weights_only=True)["model"][
        "vision_encoder.layers.3.blocks.0.attn.relative_position_bias_table"
    ]
    assert table.shape[0] != stored.shape[0] == 49


def _saved(tmp_path: Path, name: str, model: dict) -> Path:
    stored = torch.load(CHECKPOINT, weights_only=True)
    torch.save({**stored, "model": model}, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("rasa", "is a checkpoint of RaSa: use -m rasa"),
        ("irra", "is a checkpoint of IRRA: use -m irra"),
        ("no stage", "Swin stages"),
        ("fusion_world_size=0", "fusion_world_size must be an integer >= 1"),
        ("toy", "per-dataset statistics, known for cuhk-pedes, icfg-pedes, rstpreid; for toy-pedes"),
        ("fill", "APTM's fusion defines what fills a row"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    fixtures = FOLDER.parent
    checkpoint, method_args, dataset = CHECKPOINT, [], ["-d", "cuhk-pedes", "--data-root", str(FOLDER)]
    if case == "rasa":
        checkpoint = fixtures / "rasa_reference" / "rasa_checkpoint.pth"
    elif case == "irra":
        checkpoint = fixtures / "irra_reference" / "irra_checkpoint.pth"
    elif case == "no stage":
        model = torch.load(CHECKPOINT, weights_only=True)["model"]
        checkpoint = _saved(
            tmp_path, "x.pth", {k: v for k, v in model.items() if not k.startswith("vision_encoder.layers.1.")}
        )
    elif case == "fill":
        method_args = ["fill=first-stage"]
    elif case == "toy":
        dataset = ["-d", "toy-pedes", "--limit", "8"]
    else:
        method_args = [case]
    out = tmp_path / "res"
    args = ["eval", "-m", "aptm", *dataset, "--checkpoint", str(checkpoint), "--out", str(out)]
    for value in method_args:
        args += ["--method-arg", value]
    assert main(args) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists() or not list(out.rglob("*.json"))


def test_another_dataset_runs_with_named_statistics(tmp_path):
    result = _eval(tmp_path, "stats=icfg-pedes", "k=3")
    preprocessing = result["method"]["preprocessing"]
    assert preprocessing["normalize"]["statistics"] == "icfg-pedes" and preprocessing["caption_cleaning"] == "icfg-rstp"
    assert result["method"]["arguments"]["stats"] == "icfg-pedes"
