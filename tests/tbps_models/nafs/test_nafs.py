"""NAFS at tiny size: scorer exactness, shortlist, re-ranking, checkpoints and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from tbps_bench.errors import BenchError
from tbps_models.nafs import Nafs, NafsConfig, build_from_official, load_official_checkpoint
from tbps_models.nafs.image import SMALL_MAP_POSITIONS, SmallMapConv2d, StaircaseImageNet
from tbps_models.nafs.rerank import rerank_rvn, rerank_rvn_official
from tbps_models.nafs.scoring import local_similarity, local_similarity_candidates
from tbps_models.nafs.tokenization import NafsTokenizer, split_sub_sentences

from nafs_reference_scoring import local_similarity_official_loop, local_similarity_per_pair
from tiny_bert import bert_config_folder

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, offline_vocab):
    return bert_config_folder(tmp_path_factory.mktemp("tiny-bert"), TINY_BERT, offline_vocab)


def tiny_config(folder, **changes) -> NafsConfig:
    values = {
        "trunk": "resnet18",
        "image_height": 64,
        "image_width": 32,
        "max_length": 24,
        "text_encoder": str(folder),
        "text_encoder_pretrained": False,
    }
    return NafsConfig(**{**values, **changes})


def random_problem(n_images=13, n_texts=17, regions=6, length=30, dim=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(n, r, dim, generator=generator) for n, r in [(n_images, regions)] * 2]
    tensors += [torch.randn(n_texts, length, dim, generator=generator) for _ in range(2)]
    lengths = torch.randint(3, length + 1, (n_texts,), generator=generator)
    return (*tensors, lengths)


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- scorer


@pytest.mark.parametrize(("group", "tile"), [(64, 200), (5, 4), (1, 1)])
def test_batched_local_similarity_equals_per_pair(group, tile):
    problem = random_problem()
    expected = local_similarity_per_pair(*problem)
    assert rel_max(local_similarity(*problem, texts_per_group=group, images_per_tile=tile), expected) <= 1e-5


def test_official_loop_baseline_computes_the_same_scores():
    problem = random_problem(seed=1)
    assert rel_max(local_similarity_official_loop(*problem), local_similarity_per_pair(*problem)) <= 1e-5


def test_candidate_scoring_equals_the_dense_block():
    problem = random_problem(seed=2)
    candidates = torch.stack([torch.randperm(13, generator=torch.Generator().manual_seed(i))[:4] for i in range(17)])
    dense = local_similarity(*problem).T  # texts x images
    got = local_similarity_candidates(*problem, candidates=candidates, texts_per_group=3)
    assert rel_max(got, dense.gather(1, candidates)) <= 1e-5


def test_bf16_scores_stay_close():
    problem = random_problem(seed=3)
    expected = local_similarity(*problem)
    low = local_similarity(*[t.bfloat16() if t.is_floating_point() else t for t in problem])
    assert rel_max(low, expected) <= 5e-2  # bf16 keeps 8 bits of mantissa


def test_scorer_is_differentiable_for_training():
    q, v, k, u, lengths = random_problem(n_images=4, n_texts=4)
    q.requires_grad_(True)
    local_similarity(q, v, k, u, lengths).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------- re-ranking


def _brute_rvn(scores, image_global, k):
    unit = torch.nn.functional.normalize(image_global, dim=1)
    visual = unit @ unit.T
    out = scores.clone()
    for t in range(scores.shape[0]):
        chosen = set(scores[t].topk(k).indices.tolist())
        for g in range(scores.shape[1]):
            neighbours = set(visual[g].topk(k).indices.tolist())
            out[t, g] += len(chosen & neighbours) / len(chosen | neighbours)
    return out


def _brute_rvn_official(scores, image_global, k):
    image_major = scores.T.clone()
    unit = torch.nn.functional.normalize(image_global, dim=1)
    visual = unit @ unit.T
    n_images, n_texts = image_major.shape
    for i in range(n_images):
        texts = set(image_major[i].topk(k).indices.tolist())
        for j in range(min(n_images, n_texts)):
            images = set(visual[j].topk(k).indices.tolist())
            image_major[i, j] += len(texts & images) / len(texts | images)
    return image_major.T


@pytest.mark.parametrize(
    ("input_shape", "kernel", "stride", "padding", "bias"),
    [
        ((32, 64, 4, 2), 3, 1, 1, False),  # nafs-tiny's layer4 3 x 3
        ((4, 16, 4, 2), 1, 1, 0, False),  # its downsample
        ((4, 16, 3, 3), 3, 2, 1, True),
        ((4, 8, 2, 3), (3, 1), (1, 2), (1, 0), True),
        ((4, 8, 8, 4), 3, 1, 1, True),  # 32 positions: the library convolution itself
    ],
)
def test_small_map_convolution_equals_the_library_one(input_shape, kernel, stride, padding, bias):
    torch.manual_seed(0)
    small = SmallMapConv2d(input_shape[1], 24, kernel, stride, padding, bias=bias)
    x = torch.randn(input_shape, requires_grad=True)
    grad = torch.randn_like(small(x))
    ours = small(x)
    ours.backward(grad)
    parameters = [small.weight] + ([small.bias] if bias else [])
    ours_grads = [x.grad.clone()] + [p.grad.clone() for p in parameters]
    x.grad = None
    for parameter in parameters:
        parameter.grad = None
    library = torch.nn.functional.conv2d(x, small.weight, small.bias, stride, padding)
    library.backward(grad)
    if input_shape[2] * input_shape[3] > SMALL_MAP_POSITIONS:
        assert torch.equal(ours, library)  # not taken: the library's bits
    else:
        torch.testing.assert_close(ours, library, rtol=0, atol=1e-5 * float(library.detach().abs().max()))
    for mine, theirs in zip(ours_grads, [x.grad] + [p.grad for p in parameters], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))


def test_staircase_keeps_the_trunk_names_with_small_map_convolutions():
    import torchvision

    net = StaircaseImageNet("resnet18", 3, 2)
    convolutions = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(type(m) is SmallMapConv2d for m in convolutions)
    trunk = {k for k in torchvision.models.resnet18(weights=None).state_dict() if not k.startswith("fc.")}
    assert trunk <= set(net.state_dict())  # release checkpoints and torchvision weights still load by name


@pytest.mark.parametrize("shape", [(9, 6), (5, 8)])
def test_rerankers_match_brute_force(shape):
    generator = torch.Generator().manual_seed(4)
    scores, image_global = torch.randn(*shape, generator=generator), torch.randn(shape[1], 5, generator=generator)
    assert torch.allclose(rerank_rvn(scores, image_global, 3), _brute_rvn(scores, image_global, 3))
    assert torch.allclose(rerank_rvn_official(scores, image_global, 3), _brute_rvn_official(scores, image_global, 3))


# ----------------------------------------------------------------------------- tokenisation


def test_sub_sentences_follow_the_release():
    assert split_sub_sentences("a man. red coat, black bag", 2) == ["a man", " red coat"]
    assert split_sub_sentences("a man in red", 2) == ["a man in red", "[PAD]"]
    assert split_sub_sentences("a man.", 2) == ["a man", ""]


def test_long_captions_are_truncated_and_flagged(offline_vocab):
    tokenizer = NafsTokenizer(offline_vocab.parent, max_length=8)
    tokens = tokenizer(["a man in a red coat with a black bag and white shoes", "a man"])
    assert tokens["truncated"].tolist() == [True, False]
    assert tokens["tokens"][0, -1] != 102  # the cut caption lost its [SEP], as released
    assert tokens["length"].tolist() == [11, 7]  # kept ids + 3


def test_empty_caption_is_a_clear_error(offline_vocab):
    with pytest.raises(BenchError, match="caption 1 of the batch is empty"):
        NafsTokenizer(offline_vocab.parent)(["a man", "   "])


def test_distinct_sub_sentences_are_encoded_once_with_the_row_by_row_outputs(tiny_bert, monkeypatch):
    """Without dropout, each distinct sub-sentence runs once (sorted by length) and the encoder sees
    pieces of at most CPU_TOKENS_PER_PIECE tokens; every caption gets the outputs it would get on
    its own row. In training mode the batch runs whole, as before."""
    import tbps_models.nafs.text as text

    monkeypatch.setattr(text, "CPU_TOKENS_PER_PIECE", 48)  # two full captions (24 tokens) a piece
    model = Nafs(tiny_config(tiny_bert))
    captions = [
        "a man. red coat, black bag",
        "a woman in a long green dress. red coat",
        "a man in red",  # one sub-sentence: the second is the literal [PAD]
        "a man. red coat",
        "a child with a very small yellow umbrella and boots, blue hat",
    ]
    tokens = NafsTokenizer(tiny_bert, 24)(captions)
    inputs = (tokens["tokens"], tokens["mask"], tokens["sub_tokens"], tokens["sub_mask"])
    language = model.language_model.eval()
    seen = []
    bert_forward = language.textExtractor.forward
    monkeypatch.setattr(
        language.textExtractor, "forward", lambda **kw: seen.append(kw["input_ids"].shape) or bert_forward(**kw)
    )
    with torch.no_grad():
        hidden, distinct = language(*inputs)
        calls = list(seen)
        whole = language._hidden(tokens["tokens"], tokens["mask"])
        flat = tokens["sub_tokens"].reshape(10, -1), tokens["sub_mask"].reshape(10, -1)
        rows = torch.stack([language._sub_sentence_cls(t[None], m[None])[0] for t, m in zip(*flat, strict=True)])
    assert [shape[0] for shape in calls[:3]] == [2, 2, 1]  # the full captions, 48 tokens a piece
    sub_calls = calls[3:]
    assert sum(shape[0] for shape in sub_calls) == 7  # 10 sub-sentences, 7 distinct
    lengths = [shape[1] for shape in sub_calls]
    assert len(lengths) > 1 and lengths == sorted(lengths) and lengths[0] < lengths[-1]  # short pieces first
    assert all(rows * length <= 48 or rows == 1 for rows, length in sub_calls)
    torch.testing.assert_close(hidden, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(distinct.reshape(10, -1), rows, rtol=0, atol=1e-5)
    language.train()
    seen.clear()
    language(*inputs)
    assert [shape[0] for shape in seen] == [5, 10]  # training: whole batches, dropout drawn per row


# ----------------------------------------------------------------------------- model and checkpoints


def test_batch_of_one_and_the_parts_of_the_score(tiny_bert):
    model = Nafs(tiny_config(tiny_bert)).eval()
    out = model.run(torch.randn(1, 3, 64, 32), ["a woman in a red coat. she carries a bag"])
    assert out["S"].shape == (1, 1)
    assert out["local_img_query"].shape == (1, 6, 32)
    assert out["local_text_key"].shape == (1, 1 + 2 + 22, 32)
    assert torch.allclose(out["S"], out["sim_global"] + out["sim_local"])


def test_wrong_image_size_is_a_clear_error(tiny_bert):
    model = Nafs(tiny_config(tiny_bert)).eval()
    with pytest.raises(BenchError, match=r"expects images of shape \(batch, 3, 64, 32\)"):
        model.encode_images(torch.randn(2, 1, 64, 32))


def _release_file(model: Nafs, path, with_w=True):
    payload = {"network": {f"module.{k}": v for k, v in model.state_dict().items()}}
    if with_w:
        payload["W"] = torch.randn(model.feature_size, 7)
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def tiny_release(tiny_bert, tmp_path_factory):
    """A nafs-tiny-sized model and its release-format file (120 MB), written once for the loader tests."""
    model = Nafs(tiny_config(tiny_bert)).eval()
    return model, _release_file(model, tmp_path_factory.mktemp("release") / "release.pth")


def test_release_checkpoint_round_trip(tiny_bert, tmp_path, tiny_release):
    source, path = tiny_release
    loaded = build_from_official(path, tiny_bert, tiny_config(tiny_bert))
    images, captions = torch.randn(3, 3, 64, 32), ["a man in black", "red coat, white shoes", "a girl. long hair"]
    assert torch.equal(source.run(images, captions)["S"], loaded.run(images, captions)["S"])
    assert loaded.loss_weight_matrix.shape == (32, 7)
    without_w = build_from_official(
        _release_file(source, tmp_path / "no_w.pth", False), tiny_bert, tiny_config(tiny_bert)
    )
    assert without_w.loss_weight_matrix is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trunk": "resnet34"}, "missing keys"),
        ({"part2": 2}, "unexpected keys"),
        ({"max_length": 30}, "shape mismatch"),
    ],
)
def test_checkpoint_of_another_architecture(tiny_bert, changes, message, tiny_release):
    _, path = tiny_release
    with pytest.raises(BenchError, match=message):
        load_official_checkpoint(Nafs(tiny_config(tiny_bert, **changes)), path)


def test_trunk_of_another_width_is_a_shape_mismatch(tiny_bert, tiny_release):
    _, path = tiny_release
    with pytest.raises(BenchError, match="another architecture.*shape mismatch"):
        load_official_checkpoint(Nafs(tiny_config(tiny_bert, trunk="resnet50")), path)


def test_truncated_and_foreign_checkpoints(tmp_path, tiny_release):
    model, path = tiny_release
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BenchError, match="truncated, corrupt or not a torch file"):
        load_official_checkpoint(model, truncated)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(BenchError, match="has no 'network' state dict"):
        load_official_checkpoint(model, other)
    with pytest.raises(BenchError, match="does not exist"):
        load_official_checkpoint(model, tmp_path / "absent.pth")


def test_checkpoint_with_pickled_objects_is_refused(tiny_bert, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"network": {}, "args": argparse_namespace()}, path)
    with pytest.raises(BenchError, match="truncated, corrupt or not a torch file"):
        load_official_checkpoint(Nafs(tiny_config(tiny_bert)), path)


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=0.1)


def test_text_encoder_folder_without_vocab_or_config(tiny_bert, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_BERT))
    with pytest.raises(BenchError, match="has no vocab.txt"):
        NafsTokenizer(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="has no config.json"):
        Nafs(tiny_config(tiny_bert, text_encoder=str(tmp_path / "empty")))
    with pytest.raises(BenchError, match="neither a folder nor a model in the Hugging Face cache"):
        Nafs(tiny_config(tiny_bert, text_encoder=str(tmp_path / "missing")))
    with pytest.raises(BenchError, match="no model.safetensors"):
        Nafs(tiny_config(tiny_bert, text_encoder_pretrained=True))


# ----------------------------------------------------------------------------- through the harness


def _eval(tmp_path, *method_args, options=()):
    from tbps_bench.cli import main
    from tbps_bench.results import load_result

    name = "_".join(method_args + tuple(options)).replace("=", "-").replace("--", "")
    out = tmp_path / (name or "plain")
    args = ["eval", "-m", "nafs-tiny", "-d", "toy-pedes", "--limit", "60", "--out", str(out), *options]
    for arg in method_args:
        args += ["--method-arg", arg]
    assert main(args) == 0
    return load_result(next(out.rglob("*.json")))


def test_shortlist_and_rerank_through_the_harness(tmp_path):
    exhaustive = _eval(tmp_path)
    everything = _eval(tmp_path, "shortlist=1000")  # every pair shortlisted: the same ranking
    assert everything["metrics"] == exhaustive["metrics"]
    assert everything["protocol"]["shortlist_k"] == 1000
    assert everything["timings"]["cache_hits"] == {"images": True, "texts": True}  # features reused
    short = _eval(tmp_path, "shortlist=5")
    assert short["protocol"]["shortlist_k"] == 5
    for rerank in ("rvn", "rvn-official"):
        reranked = _eval(tmp_path, f"rerank={rerank}")
        assert reranked["protocol"]["rerank"] == rerank
    assert exhaustive["protocol"]["rerank"] == "none"
    low = _eval(tmp_path, "score_dtype=bf16")
    assert low["protocol"]["score_dtype"] == "bf16"
    assert low["metrics"]["t2i"]["mAP"] == pytest.approx(exhaustive["metrics"]["t2i"]["mAP"], abs=5.0)


def test_text_features_are_stored_packed_in_the_chosen_precision(tmp_path):
    from safetensors.torch import load_file

    from tbps_bench.fileio import cache_root

    full = _eval(tmp_path)
    half = _eval(tmp_path, options=("--feature-dtype", "bf16"))
    assert full["protocol"]["feature_dtype"] == "fp32" and half["protocol"]["feature_dtype"] == "bf16"
    assert half["timings"]["cache_hits"] == {"images": False, "texts": False}  # its own cache entries
    assert half["metrics"]["t2i"]["mAP"] == pytest.approx(full["metrics"]["t2i"]["mAP"], abs=5.0)
    entries = [load_file(str(path)) for path in (cache_root() / "features").glob("*.safetensors")]
    texts = [entry for entry in entries if "local_text_key:packed" in entry]
    assert {entry["local_text_key:packed"].dtype for entry in texts} == {torch.float32, torch.bfloat16}
    for entry in texts:  # one row per element of each caption, none for padding
        assert entry["local_text_key:packed"].shape[0] == int(entry["packed_lengths"].sum())
        assert int(entry["packed_lengths"].max()) < 101


@pytest.mark.parametrize("group", [1, 4, 64])
def test_packed_text_features_score_like_padded_ones(group):
    """Text elements stored at their true lengths (packed) give the padded layout's numbers."""
    q, v, k, u, lengths = random_problem(n_images=5, n_texts=9)
    valid = torch.arange(k.shape[1])[None, :] < lengths[:, None]
    padded = local_similarity(q, v, k, u, lengths, texts_per_group=group)
    packed = local_similarity(q, v, k[valid], u[valid], lengths, texts_per_group=group)
    assert torch.equal(packed, padded)
    candidates = torch.randint(0, 5, (9, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        local_similarity_candidates(q, v, k[valid], u[valid], lengths, candidates, texts_per_group=group),
        local_similarity_candidates(q, v, k, u, lengths, candidates, texts_per_group=group),
    )
    with pytest.raises(ValueError, match="packed text features hold"):
        local_similarity(q, v, k[valid][:-1], u[valid][:-1], lengths)


def test_shortlist_ranks_scored_pairs_first():
    from tbps_models.nafs.method import NafsMethod

    method = NafsMethod(config="nafs-tiny", shortlist=3)
    q, v, k, u, lengths = random_problem(n_images=9, n_texts=11, dim=32)
    generator = torch.Generator().manual_seed(5)
    images = {"global_img_feat": torch.randn(9, 32, generator=generator), "local_img_query": q, "local_img_value": v}
    valid = torch.arange(k.shape[1])[None, :] < lengths[:, None]
    texts = {"global_text_feat": torch.randn(11, 32, generator=generator), "packed_lengths": lengths}
    texts.update({"local_text_key:packed": k[valid], "local_text_value:packed": u[valid]})
    got = method.score_all(images, texts)
    unit = torch.nn.functional.normalize
    global_scores = unit(texts["global_text_feat"], dim=1) @ unit(images["global_img_feat"], dim=1).T
    full = global_scores + local_similarity_per_pair(q, v, k, u, lengths).T
    for t in range(11):
        chosen = set(global_scores[t].topk(3).indices.tolist())
        chosen |= {i for i in range(9) if t in global_scores[:, i].topk(3).indices.tolist()}
        scored = sorted(chosen, key=lambda i: -float(full[t, i]))
        rest = sorted(set(range(9)) - chosen, key=lambda i: -float(global_scores[t, i]))
        assert got[t].argsort(descending=True).tolist() == scored + rest


# ----------------------------------------------------------------------------- local weights only


def test_text_encoder_from_a_populated_hugging_face_cache(tmp_path, monkeypatch, tiny_bert):
    from huggingface_hub import constants

    from tbps_models.local_weights import resolve_text_encoder

    snapshot = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        (snapshot / name).write_bytes((tiny_bert / name).read_bytes())
    refs = tmp_path / "hub" / "models--someone--tiny-bert" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_text_encoder("someone/tiny-bert") == snapshot
    model = Nafs(tiny_config(tiny_bert, text_encoder="someone/tiny-bert"))
    assert model.config.text_encoder == str(snapshot)
    with pytest.raises(BenchError, match=r"neither a folder nor a model in the Hugging Face cache .*hub"):
        resolve_text_encoder("someone/absent")


def test_trunk_weights_from_the_torch_hub_cache(tmp_path, monkeypatch, tiny_bert):
    import torchvision

    from tbps_models.local_weights import resolve_trunk_weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    with pytest.raises(BenchError, match=r"no resnet18-\*\.pth in the torch hub cache"):
        resolve_trunk_weights("imagenet", "resnet18")
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "torch-hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = Nafs(tiny_config(tiny_bert, trunk_weights="imagenet"))
    assert torch.equal(model.image_model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.image_model.branch3_layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    with pytest.raises(BenchError, match="does not exist; expected a torchvision resnet18 state dict"):
        resolve_trunk_weights(tmp_path / "absent.pth", "resnet18")


def test_config_file_overrides_a_preset(tmp_path):
    from tbps_models.nafs.method import NafsMethod

    path = tmp_path / "my-nafs.json"
    path.write_text(json.dumps({"base": "nafs-tiny", "model": {"part2": 2, "max_length": 24}, "train": {"epochs": 1}}))
    method = NafsMethod(config=str(path))
    assert method.model.config.part2 == 2 and method.model.fc_p2_list_query.__len__() == 2
    assert method.default_training_config()["epochs"] == 1
    assert method.default_training_config()["batch_size"] == 32  # from the nafs-tiny preset
    path.write_text(json.dumps({"model": {"stripes": 4}}))
    with pytest.raises(BenchError, match=r"unknown NAFS config keys \['stripes'\]"):
        NafsMethod(config=str(path))
    path.write_text(json.dumps({"schedule": {}}))
    with pytest.raises(BenchError, match="unexpected top-level keys"):
        NafsMethod(config=str(path))
