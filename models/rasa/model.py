"""A RaSa or MARS model: timm's ViT and ALBEF's BERT, under the checkpoint's own key names."""

from __future__ import annotations

import torch
from torch import nn

from tbps_models.albef.model import CrossEncoder
from tbps_models.albef.vision import build_vit
from tbps_models.layouts import DISPLAY
from tbps_models.rasa.checkpoint import AlbefCheckpoint, AlbefShape, Family


class AlbefModel(CrossEncoder):
    """``visual_encoder``, ``vision_proj``, ``text_encoder.bert``, ``text_proj``, ``itm_head``."""

    def __init__(self, shape: AlbefShape):
        super().__init__(shape.bert, shape.embed_dim)
        self.shape = shape
        self.match_from_ids = shape.family is Family.MARS
        self.visual_encoder = build_vit(shape.vit)
        self.vision_proj = nn.Linear(shape.vit.width, shape.embed_dim)
        self.itm_head = nn.Linear(shape.bert.hidden, 2)

    @classmethod
    def from_checkpoint(cls, checkpoint: AlbefCheckpoint, source: str) -> AlbefModel:
        return cls(checkpoint.shape).load(checkpoint.state, source, DISPLAY[checkpoint.shape.family.value])

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder.forward_features(pixels)
