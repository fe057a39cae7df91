"""The Swin Transformer as APTM builds it, on non-square inputs (384 x 128).

Why not timm's or transformers' Swin: both shrink windows per side on a non-square stage grid and keep
shifting along the long side (timm: stage 4 at 12 x 4 gets 8 x 4 windows and a shift of 4; transformers
builds every stage's bias table for the configured window), whereas APTM's stage whose grid's short
side is at most the window uses a square window of that side and no shift at all (stage 3: 8 x 8, no
shift; stage 4: 4 x 4, bias table of 49 rows). ``tests/tbps_models/aptm/test_aptm.py`` shows timm cannot take the
released tables. What is the same as timm: 4 x 4 patch embedding with LayerNorm, pre-LN blocks with
relative position bias, patch merging (2 x 2 neighbours concatenated, LayerNorm, bias-free linear),
final LayerNorm. APTM then prepends the mean of the tokens as token 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tbps_bench.errors import BenchError


@dataclass(frozen=True)
class SwinShape:
    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    window: int
    height: int
    width: int
    patch: int = 4
    mlp_ratio: float = 4.0

    @property
    def out_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def grid(self, stage: int) -> tuple[int, int]:
        scale = self.patch * 2**stage
        return self.height // scale, self.width // scale

    def stage_window(self, stage: int) -> tuple[int, bool]:
        """(window side, whether odd blocks shift) of a stage: APTM's rule."""
        short = min(self.grid(stage))
        return (short, False) if short <= self.window else (self.window, True)


def infer_swin(state: dict[str, torch.Tensor], height: int, width: int, source: str) -> SwinShape:
    """Sizes from the ``vision_encoder.*`` shapes (prefix removed)."""
    if "patch_embed.proj.weight" not in state:
        raise BenchError(f"{source}: the image encoder has no patch_embed.proj.weight; expected APTM's Swin")
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    stages = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    if stages != list(range(len(stages))) or not stages:
        raise BenchError(f"{source}: Swin stages {stages}; expected layers.0 .. layers.N")
    depths, heads = [], []
    for stage in stages:
        blocks = {int(k.split(".")[3]) for k in state if k.startswith(f"layers.{stage}.blocks.")}
        if not blocks:
            raise BenchError(f"{source}: Swin stage {stage} has no blocks")
        depths.append(max(blocks) + 1)
        heads.append(state[f"layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[1])
    rows = state["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(rows**0.5) + 1) // 2
    shape = SwinShape(embed_dim, tuple(depths), tuple(heads), window, height, width, patch)
    for stage in stages:  # every stage's table must be the one APTM builds at this input size
        side, _ = shape.stage_window(stage)
        found = state[f"layers.{stage}.blocks.0.attn.relative_position_bias_table"].shape[0]
        if found != (2 * side - 1) ** 2:
            raise BenchError(
                f"{source}: Swin stage {stage} has a {found}-row bias table; at {height} x {width} APTM builds "
                f"{(2 * side - 1) ** 2} ({side} x {side} windows)"
            )
    return shape


def _relative_index(side: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (side - 1)
    return relative[:, :, 0] * (2 * side - 1) + relative[:, :, 1]


def _windows(x: torch.Tensor, side: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // side, side, w // side, side, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, side * side, c)


def _unwindow(windows: torch.Tensor, side: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // side, w // side, side, side, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(h: int, w: int, side: int, shift: int) -> torch.Tensor:
    """-100 between positions that the cyclic shift brought from different regions (Swin's mask)."""
    regions = torch.zeros(1, h, w, 1)
    spans = (slice(0, -side), slice(-side, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in spans for c in spans):
        regions[:, rows, cols, :] = label
    flat = _windows(regions, side).squeeze(-1)
    different = flat[:, None, :] != flat[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, -100.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, side: int):
        super().__init__()
        self.heads, self.side = heads, side
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * side - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_index(side), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(windows, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attention = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attention = attention + bias.view(tokens, tokens, -1).permute(2, 0, 1)
        if mask is not None:
            count = mask.shape[0]
            attention = attention.view(-1, count, self.heads, tokens, tokens) + mask[None, :, None]
            attention = attention.view(-1, self.heads, tokens, tokens)
        out = attention.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, grid: tuple[int, int], side: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.grid, self.side, self.shift = grid, side, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, side)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = _shift_mask(*grid, side, shift) if shift else None
        self.register_buffer("shift_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (b, _, c) = self.grid, x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = _unwindow(self.attn(_windows(y, self.side), self.shift_mask), self.side, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (b, _, c) = self.grid, x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, shape: SwinShape, stage: int):
        super().__init__()
        dim, grid = shape.embed_dim * 2**stage, shape.grid(stage)
        side, shifts = shape.stage_window(stage)
        self.blocks = nn.ModuleList(
            SwinBlock(dim, shape.heads[stage], grid, side, side // 2 if shifts and i % 2 else 0, shape.mlp_ratio)
            for i in range(shape.depths[stage])
        )
        if stage < len(shape.depths) - 1:
            self.downsample = PatchMerging(dim, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if hasattr(self, "downsample") else x


class PatchEmbed(nn.Module):
    def __init__(self, shape: SwinShape):
        super().__init__()
        self.proj = nn.Conv2d(3, shape.embed_dim, shape.patch, shape.patch)
        self.norm = nn.LayerNorm(shape.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(pixels).flatten(2).transpose(1, 2))


class Swin(nn.Module):
    """``vision_encoder``: the tokens after the final LayerNorm, their mean prepended as token 0."""

    def __init__(self, shape: SwinShape):
        super().__init__()
        self.shape = shape
        self.patch_embed = PatchEmbed(shape)
        self.layers = nn.ModuleList(SwinStage(shape, stage) for stage in range(len(shape.depths)))
        self.norm = nn.LayerNorm(shape.out_width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(x)
        return torch.cat([x.mean(1, keepdim=True), x], 1)
