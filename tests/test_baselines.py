"""Baselines: clip (tiny random config), cmpm-cmpc, frozen-linear's hand-built image encoder."""

from __future__ import annotations

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.results import load_result
from tbps_models.clip.method import infonce_loss, sdm_loss

from tiny_clip import write_tiny_clip

SMALL_IMAGES = ["--method-arg", "image_height=64", "--method-arg", "image_width=32"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _train_and_evaluate(tmp_path, method, method_args):
    runs, out = tmp_path / "runs", tmp_path / "res"
    train = ["train", "-m", method, "-d", "toy-pedes", "--epochs", "1", "--max-steps", "2", "--out", str(runs)]
    assert main([*train, *method_args]) == 0
    checkpoint = runs / method / "toy-pedes" / "seed0" / "best"
    evaluate = ["eval", "-m", method, "-d", "toy-pedes", "--limit", "24", "--checkpoint", str(checkpoint)]
    assert main([*evaluate, "--out", str(out), *method_args]) == 0
    return load_result(next(out.rglob("*.json")))


def test_clip_zero_shot_and_fine_tuned(tiny_clip, tmp_path):
    out = tmp_path / "zero"
    args = ["eval", "-m", "clip", "-d", "toy-pedes", "--limit", "24", "--out", str(out)]
    assert main([*args, "--method-arg", f"model={tiny_clip}", *SMALL_IMAGES]) == 0
    zero = load_result(next(out.rglob("*.json")))
    assert zero["method"]["arguments"]["mode"] == "zero-shot" and zero["method"]["trained_on"] is None
    tuned = _train_and_evaluate(tmp_path, "clip", ["--method-arg", f"model={tiny_clip}", *SMALL_IMAGES])
    assert tuned["method"]["arguments"]["mode"] == "fine-tuned"
    assert tuned["method"]["trained_on"] == "toy-pedes"


def test_clip_position_embeddings_follow_the_person_aspect(tiny_clip):
    from tbps_models.clip.method import ClipMethod

    method = ClipMethod(model=str(tiny_clip), image_height=64, image_width=32)
    features = method.encode_images({"pixels": torch.randn(2, 3, 64, 32)})  # 8 x 4 patches, trained on 4 x 4
    assert features.shape == (2, 16)
    tokens = method.tokenize(["a man " * 60, "a woman"])
    assert tokens["truncated"].tolist() == [True, False]
    assert tokens["input_ids"].shape[1] == 77 and tokens["input_ids"][0, -1] == method.tokenizer.eos_token_id


@pytest.mark.parametrize("loss", [sdm_loss, infonce_loss])
def test_identity_losses_prefer_matching_pairs(loss):
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 3])
    centres = torch.nn.functional.normalize(torch.randn(4, 32, generator=generator), dim=1)
    aligned = loss(centres[labels], centres[labels], labels, 0.02)
    shuffled = loss(centres[labels], centres[labels[[2, 3, 4, 0, 1]]], labels, 0.02)
    assert float(aligned) < float(shuffled)
    assert float(loss(centres[labels] * 100, centres[labels], labels, 0.02)) == pytest.approx(float(aligned))


def test_cmpm_cmpc_builds_its_vocabulary_and_round_trips(tmp_path):
    args = ["--method-arg", "trunk=resnet18", *SMALL_IMAGES, "--method-arg", "min_count=3"]
    result = _train_and_evaluate(tmp_path, "cmpm-cmpc", args)
    assert result["method"]["preprocessing"]["vocabulary"] > 20  # words seen >= 3 times in the train captions
    assert result["method"]["trained_on"] == "toy-pedes"


def test_efficientnet_lite0_recognises_imagenet_classes():
    """The hand-built network with the packaged weights classifies real photos (ImageNet ids)."""
    from PIL import Image
    from skimage import data
    from torchvision import transforms as T

    from tbps_models.frozen_linear.efficientnet_lite import EfficientNetLite0

    model = EfficientNetLite0.pretrained().eval()
    frozen = EfficientNetLite0.pretrained().frozen()  # BatchNorm folded, channels-last
    transform = T.Compose(
        [T.Resize((224, 224)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    for name, imagenet_class in (("camera", 872), ("coffee", 967)):  # tripod, espresso
        image = transform(Image.fromarray(getattr(data, name)()).convert("RGB"))[None]
        with torch.no_grad():
            assert int(model.classify(image).argmax()) == imagenet_class
            assert int(frozen.classify(image).argmax()) == imagenet_class
            features, folded = model(image), frozen(image)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
            assert float((folded - features).abs().max()) <= 1e-4 * float(features.abs().max())


def test_stored_bf16_features_reach_methods_in_fp32(tmp_path):
    """A frozen backbone's projection heads (fp32) run on features stored in bf16; the metrics stay
    close to fp32 storage."""
    from tbps_bench.cli import main
    from tbps_bench.results import load_result

    metrics = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        args = ["eval", "-m", "frozen-linear", "-d", "toy-pedes", "--limit", "60", "--feature-dtype", dtype]
        assert main([*args, "--out", str(out)]) == 0
        result = load_result(next(out.rglob("*.json")))
        assert result["protocol"]["feature_dtype"] == dtype
        metrics[dtype] = result["metrics"]["t2i"]["mAP"]
    assert metrics["bf16"] == pytest.approx(metrics["fp32"], abs=5.0)


def test_frozen_linear_encodes_captions_in_length_sorted_pieces_with_each_captions_features(monkeypatch):
    """On CPU the captions run sorted by length, in pieces of at most CPU_TOKENS_PER_PIECE tokens
    each cut to its longest caption; each caption gets the features it gets alone, in its own row."""
    import tbps_models.frozen_linear.method as frozen_linear
    from tbps_bench.harness import build_method

    monkeypatch.setattr(frozen_linear, "CPU_TOKENS_PER_PIECE", 40)
    method = build_method("frozen-linear", torch.device("cpu"), None, {})
    captions = [
        "a woman in a long green dress with a red coat, black boots and a small brown leather bag",
        "a man in red",
        "a child with a yellow umbrella",
        "a man wearing a grey jacket",
        "a tall man",
    ]
    encoder = method.network.backbone["text"]
    seen = []
    forward = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda **kw: seen.append(kw["input_ids"].shape) or forward(**kw))
    with torch.no_grad():
        batched = method.encode_texts({"tokens": method.tokenize(captions)})
        calls = list(seen)
        alone = torch.cat([method.encode_texts({"tokens": method.tokenize([caption])}) for caption in captions])
    widths = [shape[1] for shape in calls]
    assert len(calls) > 1 and widths == sorted(widths) and widths[0] < widths[-1]  # short pieces first
    assert all(rows * width <= 40 or rows == 1 for rows, width in calls)
    assert sum(shape[0] for shape in calls) == len(captions)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5 * float(alone.abs().max()))


def test_frozen_linear_encodes_a_cpu_batch_in_pieces_with_each_images_features():
    """On CPU the image backbone runs on pieces of CPU_IMAGES_PER_PIECE images; each image gets
    the features it gets alone, in its own row."""
    from tbps_bench.harness import build_method
    from tbps_models.frozen_linear.method import CPU_IMAGES_PER_PIECE

    method = build_method("frozen-linear", torch.device("cpu"), None, {})
    pixels = torch.randn(2 * CPU_IMAGES_PER_PIECE + 3, 3, 256, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = method.encode_images({"pixels": pixels})
        alone = torch.cat([method.network.backbone["image"](image[None]) for image in pixels])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5 * float(alone.abs().max()))
