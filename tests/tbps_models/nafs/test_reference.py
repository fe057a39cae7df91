"""NAFS against the outputs of the authors' code: release-format checkpoint in, every output out."""

from __future__ import annotations

import pytest
import torch

from tbps_models.nafs import build_from_official

from nafs_weights import NAFS_REFERENCE, release_checkpoint
from reference_checks import relative_to_max
from tiny_bert import bert_config_folder

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
BERT_BASE = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


@pytest.fixture(scope="module")
def reference():
    return torch.load(NAFS_REFERENCE / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def bert_base_folder(tmp_path_factory, offline_vocab):
    return bert_config_folder(tmp_path_factory.mktemp("bert-base-uncased"), BERT_BASE, offline_vocab)


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    checkpoint = release_checkpoint()
    network_sum = sum(float(t.double().sum()) for t in checkpoint["network"].values())
    # the sums the reference's weight rule prints: the regenerated weights are the same tensors
    assert len(checkpoint["network"]) == 807
    assert network_sum == pytest.approx(301450.7812, abs=1e-3)
    assert float(checkpoint["W"].double().sum()) == pytest.approx(-7.148482835, abs=1e-8)
    path = tmp_path_factory.mktemp("release") / "nafs_release.pth"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def model_outputs(release_file, bert_base_folder, reference):
    model = build_from_official(release_file, bert_base_folder)
    pixels = reference["inputs"]["pixels_uint8"]
    images = (pixels.permute(0, 3, 1, 2).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    labels = reference["inputs"]["labels"]
    outputs = {"identity_perm": model.run(images, reference["inputs"]["captions"], labels=labels)}
    shuffled = model.run(images, reference["inputs"]["captions"], perm2=[2, 0, 1], perm3=[1, 0])
    outputs["shuffled_perm_p2_201_p3_10"] = shuffled
    return outputs


def test_tokenisation_is_identical(model_outputs, reference):
    tokens = model_outputs["identity_perm"]["tokens"]
    inputs = reference["inputs"]
    assert torch.equal(tokens["tokens"], inputs["tokens"])
    assert torch.equal(tokens["mask"], inputs["input_masks"])
    assert torch.equal(tokens["length"], inputs["caption_length"])
    assert torch.equal(tokens["sub_tokens"].reshape(8, -1), inputs["sep_tokens"])
    assert torch.equal(tokens["sub_mask"].reshape(8, -1), inputs["sep_input_masks"])


@pytest.mark.parametrize("permutation", ["identity_perm", "shuffled_perm_p2_201_p3_10"])
@pytest.mark.parametrize(
    "name",
    ["global_img_feat", "global_text_feat", "local_img_query", "local_img_value", "local_text_key", "local_text_value"],
)
def test_outputs_match(model_outputs, reference, permutation, name):
    ours = model_outputs[permutation][name]
    ref = reference["outputs"][permutation][name]
    assert ours.shape == ref.shape
    assert relative_to_max(ours, ref) <= 1e-4


@pytest.mark.parametrize(
    ("ours", "theirs"), [("S", "sim_total"), ("sim_global", "sim_global"), ("sim_local", "sim_local_i2t")]
)
def test_score_matrices_match(model_outputs, reference, ours, theirs):
    assert relative_to_max(model_outputs["identity_perm"][ours], reference[theirs]) <= 1e-4


@pytest.mark.parametrize(
    ("ours", "theirs"), [("cmpm", "cmpm"), ("cmpc", "cmpc"), ("cont", "cont_x_lambda_cont"), ("total", "total")]
)
def test_losses_match(model_outputs, reference, ours, theirs):
    value = float(model_outputs["identity_perm"]["losses"][ours])
    if ours == "cont":  # the reference stores the weighted term 0.1 * CONT
        value *= 0.1
    assert value == pytest.approx(float(reference["losses"][theirs]), rel=1e-5)


def test_an_off_by_one_length_would_be_caught(model_outputs, reference):
    """The tolerance is tight enough to see the released off-by-one (one padding position)."""
    out = model_outputs["identity_perm"]
    from tbps_models.nafs.scoring import local_similarity

    shorter = local_similarity(
        out["local_img_query"],
        out["local_img_value"],
        out["local_text_key"],
        out["local_text_value"],
        out["tokens"]["length"] - 1,
    )
    assert relative_to_max(out["sim_global"] + shorter, reference["sim_total"]) > 1e-3


def test_the_benchmark_baseline_computes_both_released_directions(model_outputs, reference):
    """The per-text loop the speed benchmark compares with is the released computation, both ways."""
    from nafs_reference_scoring import local_similarity_official_loop

    out = model_outputs["identity_perm"]
    image_to_text, text_to_image = local_similarity_official_loop(
        out["local_img_query"],
        out["local_img_value"],
        out["local_text_key"],
        out["local_text_value"],
        out["tokens"]["length"],
        text_to_image=True,
    )
    assert relative_to_max(image_to_text, reference["sim_local_i2t"]) <= 1e-4
    assert relative_to_max(text_to_image, reference["sim_local_t2i_unused"]) <= 1e-4
