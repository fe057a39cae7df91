"""The ALBEF family's image encoder is timm's ``VisionTransformer`` with the authors' settings
(class token, learned positions added after it is prepended, pre-LN blocks with LayerNorm eps 1e-6,
qkv bias, exact GELU, final LayerNorm): their ``models/vit.py`` is a copy of timm 0.4's and keeps
its key names, so the checkpoint's ``visual_encoder.*`` loads as it is."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from tbps_bench.errors import BenchError

#: every released configuration uses 64-wide attention heads (ViT-B/16: 768 / 12)
HEAD_WIDTH = 64


@dataclass(frozen=True)
class VitShape:
    width: int
    depth: int
    heads: int
    patch: int
    grid: int
    mlp_width: int

    @property
    def image_size(self) -> int:
        return self.patch * self.grid


def infer_vit(state: dict[str, torch.Tensor], source: str, heads: int | None = None) -> VitShape:
    """Sizes from the tensor shapes (``state`` holds the ``visual_encoder.*`` keys without the prefix)."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise BenchError(f"{source}: the image encoder has no '{key}'; expected ALBEF's visual_encoder.*")
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    positions = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise BenchError(f"{source}: pos_embed has {positions} patch rows, not a square grid")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = heads or max(1, width // HEAD_WIDTH)
    if width % heads:
        raise BenchError(f"{source}: a ViT {width} wide cannot have {heads} heads")
    return VitShape(width, depth, heads, patch, grid, state["blocks.0.mlp.fc1.weight"].shape[0])


def build_vit(shape: VitShape) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=shape.image_size,
        patch_size=shape.patch,
        embed_dim=shape.width,
        depth=shape.depth,
        num_heads=shape.heads,
        mlp_ratio=shape.mlp_width / shape.width,
        qkv_bias=True,
        num_classes=0,
        global_pool="",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
    )
