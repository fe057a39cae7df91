"""The staircase image network: a ResNet trunk plus two branch copies that see finer stripes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tbps_bench.errors import BenchError
from tbps_models.local_weights import resolve_trunk_weights


def _last_stride_one(layer: nn.Sequential) -> None:
    """Keep layer4 at the resolution of layer3 (24 x 8 for a 384 x 128 input)."""
    block = layer[0]
    strided = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck vs BasicBlock
    strided.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


#: input maps of at most this many positions are convolved as one matrix product on CPU
SMALL_MAP_POSITIONS = 8


def _window_slices(kh: int, kw: int, sh: int, sw: int, out_h: int, out_w: int) -> list[tuple[slice, slice]]:
    """For each kernel offset (i, j), row-major, the padded input's rows and columns that it meets
    at every output position."""
    return [
        (slice(i, i + sh * (out_h - 1) + 1, sh), slice(j, j + sw * (out_w - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


class _WindowMatmul(torch.autograd.Function):
    """A convolution as one matrix product over each output position's (C, kh, kw) window.

    Why not ``unfold`` and autograd: the windows are gathered here by kh x kw copies of whole
    shifted slices of the channels-last input and scattered back the same way in the backward,
    where the unfolded view was copied a float at a time and ``unfold_backward`` did the same in
    reverse: a nafs-tiny step is faster (docs/benchmarks.md, "Measured reasons for choices in the
    code")."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weight, bias, stride, padding):
        batch, channels, height, width = x.shape
        out_channels, _, kh, kw = weight.shape
        (sh, sw), (ph, pw) = stride, padding
        out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
        padded = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))
        offsets = _window_slices(kh, kw, sh, sw, out_h, out_w)
        windows = [padded[:, along_h, along_w] for along_h, along_w in offsets]
        rows = torch.stack(windows, dim=-1).reshape(batch * out_h * out_w, kh * kw * channels)
        weight_rows = weight.reshape(out_channels, kh * kw * channels)
        out = rows @ weight_rows.T if bias is None else torch.addmm(bias, rows, weight_rows.T)
        ctx.save_for_backward(rows, weight_rows)
        ctx.geometry = (tuple(padded.shape), out_h, out_w, offsets, ph, pw, height, width)
        ctx.weight_shape, ctx.has_bias = weight.shape, bias is not None
        # (batch, channels, h, w) in channels-last memory: what follows reads it in place
        return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        rows, weight_rows = ctx.saved_tensors
        padded_shape, out_h, out_w, offsets, ph, pw, height, width = ctx.geometry
        grad_rows = grad.permute(0, 2, 3, 1).reshape(rows.shape[0], weight_rows.shape[0])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            batch, channels = padded_shape[0], padded_shape[3]
            grad_windows = (grad_rows @ weight_rows).view(batch, out_h, out_w, channels, len(offsets))
            grad_padded = grad_windows.new_zeros(padded_shape)
            for k, (along_h, along_w) in enumerate(offsets):
                grad_padded[:, along_h, along_w] += grad_windows[..., k]
            grad_x = grad_padded[:, ph : ph + height, pw : pw + width].permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad_rows.T @ rows).view(ctx.weight_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias, None, None


class SmallMapConv2d(nn.Conv2d):
    """A Conv2d that, on CPU and for maps of at most ``SMALL_MAP_POSITIONS`` positions, multiplies
    the gathered windows of the input by the weight in one matrix product.

    Why: nafs-tiny's layer4 maps are 4 x 2. On CPU oneDNN runs a 512-channel 3 x 3 convolution
    over so few positions at well under the rate of the equivalent 256 x 4608 x 512 matrix product
    (docs/benchmarks.md). Larger maps (the full model's, on any device)
    keep the library convolution. The two differ by rounding only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
        if x.device.type != "cpu" or x.dim() != 4 or not plain or x.shape[2] * x.shape[3] > SMALL_MAP_POSITIONS:
            return super().forward(x)
        return _WindowMatmul.apply(x, self.weight, self.bias, self.stride, self.padding)

    @classmethod
    def replace_in(cls, module: nn.Module) -> None:
        """Every Conv2d under ``module`` becomes one, keeping its parameters (and state-dict names)."""
        for name, child in module.named_children():
            if type(child) is nn.Conv2d:
                small = cls(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                    device="meta",
                )
                small.weight, small.bias = child.weight, child.bias
                setattr(module, name, small)
            else:
                cls.replace_in(child)


def stripe_bounds(height: int, parts: int) -> list[tuple[int, int]]:
    """``height // parts`` rows per stripe; the last stripe takes the remainder."""
    size = height // parts
    if size == 0:
        raise BenchError(f"a feature map of {height} rows cannot be cut into {parts} stripes; use larger images")
    return [(k * size, height if k == parts - 1 else (k + 1) * size) for k in range(parts)]


def _stripes(x: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return [x[:, :, a:b] for a, b in stripe_bounds(x.shape[2], parts)]


class StaircaseImageNet(nn.Module):
    """Branch 1: the trunk. Branch 2: copies of layer3+layer4 on layer2's map. Branch 3: a copy of
    layer4 on layer3's map. Branches 2 and 3 are pooled per horizontal stripe."""

    def __init__(self, trunk: str = "resnet50", part2: int = 3, part3: int = 2, weights: str | None = None):
        super().__init__()
        import torchvision

        base = getattr(torchvision.models, trunk)(weights=None)
        if weights is not None:
            path = resolve_trunk_weights(weights, trunk)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = base.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise BenchError(
                    f"trunk weights {path} do not fit torchvision {trunk}: missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]}"
                )
        _last_stride_one(base.layer4)
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.branch2_layer3 = copy.deepcopy(base.layer3)
        self.branch2_layer4 = copy.deepcopy(base.layer4)
        self.branch3_layer4 = copy.deepcopy(base.layer4)
        self.part2, self.part3 = part2, part3
        self.channels = base.fc.in_features
        SmallMapConv2d.replace_in(self)

    @staticmethod
    def _branch(x: torch.Tensor, layers: list[nn.Module], parts: int, perm: list[int] | None) -> list[torch.Tensor]:
        """Split & shuffle: run the branch on the stripes in ``perm`` order, then restore the order."""
        if perm is not None:
            stripes = _stripes(x, parts)
            x = torch.cat([stripes[p] for p in perm], dim=2)
        for layer in layers:
            x = layer(x)
        pooled = [s.mean(dim=(2, 3)) for s in _stripes(x, parts)]
        if perm is None:
            return pooled
        restored: list[torch.Tensor] = [pooled[0]] * parts
        for position, source in enumerate(perm):
            restored[source] = pooled[position]
        return restored

    def forward(
        self, images: torch.Tensor, perm2: list[int] | None = None, perm3: list[int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the pooled global map (B x C) and the part2 + part3 stripe vectors (B x C each).

        In training mode, stripes are shuffled by one random permutation per batch unless given."""
        if self.training:
            perm2 = perm2 if perm2 is not None else torch.randperm(self.part2).tolist()
            perm3 = perm3 if perm3 is not None else torch.randperm(self.part3).tolist()
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x2 = self.layer2(self.layer1(x))
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        global_map = x4.mean(dim=(2, 3))
        stripes = self._branch(x2, [self.branch2_layer3, self.branch2_layer4], self.part2, perm2)
        stripes += self._branch(x3, [self.branch3_layer4], self.part3, perm3)
        return global_map, stripes
