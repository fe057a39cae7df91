"""RaSa and MARS checkpoints against the outputs of the authors' own code
(tests/fixtures/{rasa,mars}_reference: seeded random weights, tiny sizes)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from tbps_bench.cli import main
from tbps_bench.errors import BenchError
from tbps_bench.results import load_result
from tbps_models.albef.tokenizer import CaptionTokenizer, pre_caption
from tbps_models.rasa.checkpoint import Family, load_albef
from tbps_models.rasa.method import CLIP_MEAN, CLIP_STD, MarsMethod, RasaMethod
from tbps_models.rasa.model import AlbefModel

from albef_eager import eager_match
from pair_scores import match_pairs, shortlist_scores
from paths import FIXTURES, ROOT
from reference_checks import relative_to_max

FAMILIES = ["rasa", "mars"]
TOLERANCE = 1e-4  # x max|reference|, as the references' READMEs state
METHODS = {"rasa": RasaMethod, "mars": MarsMethod}


def _folder(family: str) -> Path:
    return FIXTURES / f"{family}_reference"


def _checkpoint(family: str) -> Path:
    return _folder(family) / f"{family}_checkpoint.pth"


def _reference(family: str) -> dict:
    return torch.load(_folder(family) / "reference.pt", weights_only=True)


def _summary(family: str) -> dict:
    return json.loads((_folder(family) / "summary.json").read_text())


def _pixels(family: str, reference: dict) -> torch.Tensor:
    """The authors' model input: ToTensor + Normalize of their resized images, bit for bit."""
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    files = [_folder(family) / "pixels_384" / Path(name).name for name in reference["pixel_files"]]
    return torch.stack([(TF.to_tensor(Image.open(f).convert("RGB")) - mean) / std for f in files])


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    family = request.param
    reference = _reference(family)
    checkpoint = load_albef(_checkpoint(family), Family(family))
    model = AlbefModel.from_checkpoint(checkpoint, family)
    max_words = checkpoint.shape.max_words
    tokens = CaptionTokenizer(None, max_words, functools.partial(pre_caption, max_words=max_words))(
        reference["captions"]
    )
    with torch.no_grad():
        images = model.image_features(_pixels(family, reference))
        texts = model.text_features(tokens["ids"], tokens["mask"])
    return family, reference, model, tokens, images, texts


def test_captions_and_tokens_equal_the_authors(loaded):
    family, reference, model, tokens, _, _ = loaded
    max_words = reference["max_words"]
    assert [pre_caption(c, max_words) for c in reference["captions"]] == reference["texts_pre_caption"]
    assert torch.equal(tokens["ids"], reference["input_ids"])
    assert torch.equal(tokens["mask"], reference["attention_mask"])
    assert int(tokens["truncated"].sum()) == sum(n > max_words for n in _token_lengths_untruncated(family, reference))


def _token_lengths_untruncated(family: str, reference: dict) -> list[int]:
    tokenizer = CaptionTokenizer(None, 512, functools.partial(pre_caption, max_words=reference["max_words"]))
    return [len(pieces) + 1 for pieces in tokenizer.pieces(reference["captions"])]


def test_the_image_transform_gives_the_authors_input_bit_for_bit(loaded):
    family, reference, *_ = loaded
    method = METHODS[family](checkpoint=str(_checkpoint(family)))
    transform = method.image_transform()
    root = _folder(family) / "CUHK-PEDES" / "imgs"
    mine = torch.stack([transform(Image.open(root / name).convert("RGB")) for name in reference["image_files"]])
    assert torch.equal(mine, _pixels(family, reference))


def test_contrastive_features_and_similarity_equal_the_authors(loaded):
    _, reference, _, _, images, texts = loaded
    assert relative_to_max(images["embedding"], reference["image_embeddings"]) <= TOLERANCE
    assert relative_to_max(texts["embedding"], reference["text_embeddings"]) <= TOLERANCE
    similarity = texts["embedding"] @ images["embedding"].T
    assert relative_to_max(similarity, reference["itc_similarity"]) <= TOLERANCE
    k = reference["k"]
    for mine, theirs in ((similarity, reference["t2i_topk_index"]), (similarity.T, reference["i2t_topk_index"])):
        chosen = torch.sort(mine, dim=1, descending=True, stable=True).indices[:, :k]
        assert [set(row) for row in chosen.tolist()] == [set(row) for row in theirs.tolist()]


def test_matching_logits_equal_the_authors_in_both_directions(loaded):
    _, reference, model, _, images, texts = loaded
    for direction in ("t2i", "i2t"):
        mine = shortlist_scores(model, images, texts, reference[f"{direction}_topk_index"], direction)
        assert relative_to_max(mine, reference[f"{direction}_topk_itm"]) <= TOLERANCE


def test_a_pair_scores_the_same_alone_and_among_other_images_pairs(loaded):
    """Grouping by image and cutting padding do not change a pair's score beyond rounding."""
    _, _, model, _, images, texts = loaded
    texts_all = torch.arange(6).repeat(3)
    images_all = torch.arange(3).repeat_interleave(6)
    together = match_pairs(model, images, texts, texts_all, images_all)
    alone = torch.stack(
        [match_pairs(model, images, texts, t[None], i[None])[0] for t, i in zip(texts_all, images_all, strict=True)]
    )
    assert relative_to_max(together, alone) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end_first_hit_ranks_and_metrics_equal_the_authors(tmp_path, family):
    out = tmp_path / "res"
    args = ["eval", "-m", family, "-d", "cuhk-pedes", "--data-root", str(_folder(family)), "--checkpoint"]
    args += [str(_checkpoint(family)), "--method-arg", "k=4", "--method-arg", "trained_on=cuhk-pedes"]
    assert main([*args, "--out", str(out), "--pair-batch", "7"]) == 0
    result = load_result(next(out.rglob("*.json")))
    summary = _summary(family)
    assert result["per_query"]["t2i_first_hit_rank"] == summary["t2i_first_hit_rank"]
    assert result["per_query"]["i2t_first_hit_rank"] == summary["i2t_first_hit_rank"]
    for direction, name in (("t2i", "t2i_ties_by_index"), ("i2t", "i2t_ties_by_index")):
        expected = summary["metrics"][name]
        mine = result["metrics"][direction]
        assert [mine["R1"], mine["R5"], mine["R10"]] == pytest.approx([expected["r1"], expected["r5"], expected["r10"]])
        assert abs(mine["mAP"] - expected["mAP"]) < 1e-3
    protocol = result["protocol"]
    assert protocol["rerank"] == "itm top-4" and protocol["shortlist_k"] == 4
    assert protocol["shortlist_fill"] == "authors" and protocol["shortlist_fill_value"] == -100.0
    assert protocol["authors_directions"] == ["t2i"] and protocol["pair_batch"] == 7
    assert result["method"]["checkpoint"]["sha256"] == summary["checkpoint_sha256"]
    assert result["method"]["arguments"]["max_words"] == summary["config"]["max_words"]


def test_the_first_stage_fill_is_a_labelled_option(tmp_path):
    out = tmp_path / "res"
    args = ["eval", "-m", "rasa", "-d", "cuhk-pedes", "--data-root", str(_folder("rasa")), "--checkpoint"]
    args += [str(_checkpoint("rasa")), "--method-arg", "k=4", "--method-arg", "fill=first-stage", "--out", str(out)]
    assert main(args) == 0
    result = load_result(next(out.rglob("*.json")))
    assert result["protocol"]["rerank"] == "itm top-4, first-stage fill"
    assert result["protocol"]["shortlist_fill_value"] is None
    summary = _summary("rasa")
    ranks = result["per_query"]["t2i_first_hit_rank"]
    assert [r for r in ranks if r <= 4] == [r for r in summary["t2i_first_hit_rank"] if r <= 4]
    assert ranks != summary["t2i_first_hit_rank"]


def test_mars_fusion_layer_follows_the_released_rule_and_can_be_overridden():
    default = MarsMethod(checkpoint=str(_checkpoint("mars")))
    assert default.arguments()["fusion_layer"] == 1  # half of 2 layers
    other = MarsMethod(checkpoint=str(_checkpoint("mars")), fusion_layer=0)
    reference = _reference("mars")
    tokens = default.tokenize(reference["captions"][:3])
    with torch.no_grad():
        a = default.model.text_features(tokens["ids"], tokens["mask"])["embedding"]
        b = other.model.text_features(tokens["ids"], tokens["mask"])["embedding"]
    assert not torch.allclose(a, b)


def _save(path: Path, value) -> Path:
    torch.save(value, path)
    return path


def _stored(family: str) -> dict:
    return torch.load(_checkpoint(family), map_location="cpu", weights_only=True)


def test_files_of_other_methods_are_refused_by_name():
    with pytest.raises(BenchError, match="is a checkpoint of MARS: use -m mars"):
        RasaMethod(checkpoint=str(_checkpoint("mars")))
    with pytest.raises(BenchError, match="is a checkpoint of RaSa: use -m rasa"):
        MarsMethod(checkpoint=str(_checkpoint("rasa")))
    with pytest.raises(BenchError, match="is a checkpoint of IRRA: use -m irra"):
        RasaMethod(checkpoint=str(FIXTURES / "irra_reference" / "irra_checkpoint.pth"))
    from tbps_models.clip_reid import load_checkpoint

    with pytest.raises(BenchError, match="it is a checkpoint of RaSa: use -m rasa"):
        load_checkpoint(_checkpoint("rasa"), family="irra")


#: bad-input cases that are a copy of the reference checkpoint with one change: (change, message)
CHANGED_FILES = {
    "no itm head": (
        lambda s: {**s, "model": {k: v for k, v in s["model"].items() if not k.startswith("itm_head.")}},
        "'itm_head.weight' is missing",
    ),
    "image size": (
        lambda s: {**s, "config": {**s["config"], "image_res": 256}},
        "image_res 256, but its position table is for 384",
    ),
    "unknown module": (
        lambda s: {**s, "model": {**s["model"], "adapter.lora_A": torch.zeros(2, 2)}},
        "unknown entries ['adapter.lora_A']",
    ),
    "integer weights": (
        lambda s: {**s, "model": {**s["model"], "itm_head.weight": torch.zeros(2, 64, dtype=torch.int8)}},
        "'itm_head.weight' is torch.int8",
    ),
}
#: bad-input cases that are the good checkpoint with a bad method argument: (arguments, message)
BAD_ARGUMENTS = {
    "k": ({"k": 0}, "shortlist size) must be an integer >= 1; got 0"),
    "max_words": ({"max_words": "fifty"}, "'max_words' must be an integer"),
}


def _bad_file(case: str, tmp_path: Path) -> tuple[Path, str, dict]:
    """The checkpoint, the expected message and the method arguments of one bad-input case; only
    that case's file is written (a changed copy of the reference checkpoint is 23 MB)."""
    if case == "vocabulary":
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("[PAD]\n[UNK]\nhello\n")
        return _checkpoint("rasa"), "has 3 lines; expected bert-base-uncased's vocab.txt (30522)", {"vocab": str(vocab)}
    if case in BAD_ARGUMENTS:
        arguments, message = BAD_ARGUMENTS[case]
        return _checkpoint("rasa"), message, arguments
    change, message = CHANGED_FILES[case]
    return _save(tmp_path / "bad.pth", change(_stored("rasa"))), message, {}


@pytest.mark.parametrize("case", [*CHANGED_FILES, "vocabulary", *BAD_ARGUMENTS])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    path, message, method_args = _bad_file(case, tmp_path)
    out = tmp_path / "res"
    args = ["eval", "-m", "rasa", "-d", "cuhk-pedes", "--data-root", str(_folder("rasa")), "--checkpoint", str(path)]
    for key, value in method_args.items():
        args += ["--method-arg", f"{key}={value}"]
    assert main([*args, "--out", str(out)]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists() or not list(out.rglob("*.json"))


def test_leaderboards_show_the_protocol_and_label_image_to_text(tmp_path, capsys):
    """A run at the authors' k sits beside the reported RaSa row (reproduced - reported); its
    image-to-text row says it is not the authors' evaluation; a run at another k is its own row."""
    results = tmp_path / "results"
    base = ["eval", "-m", "rasa", "-d", "cuhk-pedes", "--data-root", str(_folder("rasa")), "--checkpoint"]
    base += [str(_checkpoint("rasa")), "--method-arg", "trained_on=cuhk-pedes", "--out", str(results)]
    assert main(base) == 0
    assert "k=128 is larger than the gallery (12 images)" in capsys.readouterr().err
    assert main([*base, "--method-arg", "k=4"]) == 0
    reported = ROOT / "leaderboards" / "reported"
    out = tmp_path / "lb"
    assert (
        main(["leaderboard", "build", "--results", str(results), "--out", str(out), "--reported", str(reported)]) == 0
    )
    page = (out / "cuhk-pedes.md").read_text()
    t2i, i2t = page.split("### Image-to-text", 1)
    ours = [line for line in t2i.splitlines() if line.startswith("| rasa")]
    assert len(ours) == 2
    assert any("vs RaSa" in line and "itm top-128 |" in line for line in ours)
    assert any("itm top-4 |" in line and "vs RaSa" not in line for line in ours)
    theirs = [line for line in i2t.splitlines() if line.startswith("| rasa")]
    assert len(theirs) == 2 and all("(roles swapped; not in the authors' evaluation)" in line for line in theirs)


def _bf16_and_fp32_scores(loaded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The text-to-image shortlist pairs' scores through the grouped pair path in bf16 autocast and in
    fp32, and the authors' arithmetic (every pair padded, through every layer) in bf16 autocast."""
    _, reference, model, _, images, texts = loaded
    t2i = reference["t2i_topk_index"]
    k = t2i.shape[1]
    text_rows, image_rows = torch.arange(len(t2i)).repeat_interleave(k), t2i.reshape(-1)
    full = match_pairs(model, images, texts, text_rows, image_rows)
    rows = {key: value[text_rows] for key, value in texts.items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = match_pairs(model, images, texts, text_rows, image_rows)
        x, start = model.matching_input(rows, rows["mask"].shape[1])  # every padded position, as theirs
        authors = eager_match(model, x, rows["mask"], images["tokens"][image_rows], start)
    return half.float(), full, authors.float()


def test_bf16_matching_is_the_authors_arithmetic_under_autocast(loaded):
    """Under bf16 autocast the grouped pair path rounds where the authors' code does under autocast
    (scores, softmax and products of the cross-attention in bf16): their padded per-pair arithmetic
    gives the same scores (equal on this host; torch's fused attention, which keeps the scores in
    fp32, is 5-6 % of the largest logit away)."""
    half, _, authors = _bf16_and_fp32_scores(loaded)
    assert relative_to_max(half, authors) <= 0.01


def test_bf16_matching_stays_close_to_fp32(loaded):
    """Under bf16 autocast the pair scores stay near fp32 ones (these amplified random weights lose
    13-14 % of the largest logit to bf16 rounding, as the authors' arithmetic under autocast does; a
    broken path loses all of it)."""
    half, full, _ = _bf16_and_fp32_scores(loaded)
    assert relative_to_max(half, full) <= 0.2
