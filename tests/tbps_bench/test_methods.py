"""The method and dataset contracts: types the harness dispatches on, one module per method, adapters."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tbps_bench.cli import main
from tbps_bench.methods import FrozenBackbone, Method, PairwiseMethod, Trainable
from tbps_bench.registry import METHODS

FROZEN_PLUGIN = """
import torch
from torch import nn
from torchvision.transforms import functional as F

from tbps_bench.methods import FrozenBackbone, Method, Trainable
from tbps_bench.registry import register_method
from tbps_models.losses import cmpm_loss

COLOURS = ["red", "blue", "green", "black", "white", "grey", "yellow", "brown"]
ENCODED = {"images": 0}


@register_method("frozen-mean")
class FrozenMean(FrozenBackbone, Trainable, Method):
    name = "frozen-mean"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.network.image_head = nn.Linear(3, 4)
        self.network.text_head = nn.Linear(len(COLOURS), 4)
        self.network.temperature = nn.Parameter(torch.ones(()))  # a bare Parameter is trained state too

    def image_transform(self):
        return lambda image: F.to_tensor(F.resize(image, [16, 8]))

    def tokenize(self, captions):
        return {"bag": torch.tensor([[float(c in t.lower()) for c in COLOURS] for t in captions])}

    def encode_images(self, batch):
        ENCODED["images"] += len(batch["pixels"])
        return batch["pixels"].mean(dim=(2, 3))

    def encode_texts(self, batch):
        return batch["tokens"]["bag"]

    def project_images(self, features):
        return self.network.image_head(features["embedding"]) * self.network.temperature

    def project_texts(self, features):
        return self.network.text_head(features["embedding"])

    def default_training_config(self):
        return {"epochs": 1, "batch_size": 32, "lr": 1e-2, "backbone_lr_factor": 0.0, "backbone_weight_decay": 0.0,
                "warmup_epochs": 0, "warmup_factor": 1.0, "milestones": [], "gamma": 0.1}

    def parameter_groups(self, config):
        return [{"params": list(self.network.parameters()), "lr": config["lr"], "weight_decay": 0.0}]

    def training_losses(self, batch):
        assert "pixels" not in batch, "a frozen backbone trains on cached features, without decoding images"
        loss = cmpm_loss(self.project_images(batch["image_features"]), self.project_texts(batch["text_features"]),
                         batch["labels"])
        return {"cmpm": loss, "total": loss}

    def save_checkpoint(self, folder, record):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), folder / "weights.pt")
"""


def test_methods_are_dispatched_on_their_types():
    expected = {
        "nafs": (PairwiseMethod, Trainable),
        "nafs-tiny": (PairwiseMethod, Trainable),
        "frozen-linear": (FrozenBackbone, Trainable),
        "cmpm-cmpc": (Trainable,),
        "clip": (Trainable,),
        "random": (Method,),
        "oracle": (Method,),
    }
    for name, types in expected.items():
        cls = METHODS.load(name)
        assert all(issubclass(cls, t) for t in types), name
        assert issubclass(cls, PairwiseMethod) == (PairwiseMethod in types), name
    for name in ("random", "oracle"):
        assert not issubclass(METHODS.load(name), Trainable)


def test_frozen_backbone_features_come_from_the_loop_and_its_cache(tmp_path, capsys):
    plugin = tmp_path / "frozen_mean.py"
    plugin.write_text(FROZEN_PLUGIN)
    base = ["--plugin", str(plugin), "train", "-m", "frozen-mean", "-d", "toy-pedes", "--select-on", "last"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    from tbps_plugin_frozen_mean import ENCODED  # the plugin module, imported by --plugin

    first = ENCODED["images"]
    assert first > 0  # the train split's images were encoded once
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert ENCODED["images"] == first  # a second run reads the cached backbone features
    assert main([*base, "--out", str(tmp_path / "c"), "--no-cache"]) == 0
    assert ENCODED["images"] > first  # --no-cache re-encodes
    run = tmp_path / "a" / "frozen-mean" / "toy-pedes" / "seed0"
    state = torch.load(run / "resume.pt", weights_only=True)["method"]
    assert set(state) == {"image_head.weight", "image_head.bias", "text_head.weight", "text_head.bias", "temperature"}
    summary = json.loads((run / "train.json").read_text())
    assert summary["best"] == {"epoch": 1, "R1": None}  # --select-on last: no R@1, not an epoch index


def test_a_bare_parameter_is_part_of_the_trained_state():
    from tbps_models.cmpm_cmpc.method import CmpmCmpcMethod

    method = CmpmCmpcMethod(trunk="resnet18", image_height=64, image_width=32)
    method.prepare_training(7, {}, SimpleNamespace(captions=["a man in a red coat"] * 3))
    state = method.trained_modules().state_dict()
    assert state["classifier"].shape == (512, 7)
    assert any(p is method.network.classifier for p in method.network.parameters())


def test_a_dataset_adapter_without_the_interface_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "odd_dataset.py"
    plugin.write_text(
        "from tbps_bench.registry import register_dataset\n"
        "class Odd:\n"
        "    def __init__(self, root=None):\n"
        "        self.root = root\n"
        "register_dataset('odd', Odd)\n"
    )
    assert main(["--plugin", str(plugin), "data", "info", "-d", "odd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "dataset 'odd' built a Odd that lacks spec, image_root, records, eval_split, split_statistics" in err[0]


@pytest.mark.parametrize("returned", ["tensor", "dict"])
def test_a_dual_encoder_may_return_a_tensor_or_an_embedding_dict(tmp_path, returned):
    plugin = tmp_path / f"pid_{returned}.py"
    wrap = "{'embedding': x}" if returned == "dict" else "x"
    plugin.write_text(
        "import torch\n"
        "from tbps_bench.methods import Method\n"
        "from tbps_bench.registry import register_method\n"
        f"@register_method('pid-{returned}')\n"
        "class Pid(Method):\n"
        f"    name = 'pid-{returned}'\n"
        "    needs_pixels = False\n"
        "    def _embed(self, batch):\n"
        "        x = torch.nn.functional.one_hot(batch['pid'] % 1024, 1024).float()\n"
        f"        return {wrap}\n"
        "    encode_images = encode_texts = _embed\n"
    )
    out = tmp_path / "res"
    assert main(["--plugin", str(plugin), "eval", "-m", f"pid-{returned}", "-d", "toy-pedes", "--out", str(out)]) == 0
    result = json.loads(next(out.rglob("*.json")).read_text())
    assert result["metrics"]["t2i"]["R1"] == 100.0 and result["protocol"]["scoring"] == "cosine"
