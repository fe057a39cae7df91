"""Method ``frozen-linear``: the hand-built EfficientNet-Lite0, stored features, encoding in pieces."""

from __future__ import annotations

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.results import load_result


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
