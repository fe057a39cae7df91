"""An APTM model: its Swin, ALBEF's BERT, and a two-layer matching head."""

from __future__ import annotations

import torch
from torch import nn

from tbps_models.albef.model import CrossEncoder
from tbps_models.aptm.checkpoint import AptmCheckpoint, AptmShape
from tbps_models.aptm.swin import Swin


class AptmModel(CrossEncoder):
    """``vision_encoder``, ``vision_proj``, ``text_encoder.bert``, ``text_proj`` and ``itm_head``
    (Linear(h, 2h), LayerNorm, exact GELU, Linear(2h, 2): keys 0, 1 and 3)."""

    def __init__(self, shape: AptmShape):
        super().__init__(shape.bert, shape.embed_dim)
        self.shape = shape
        self.vision_encoder = Swin(shape.swin)
        self.vision_proj = nn.Linear(shape.swin.out_width, shape.embed_dim)
        hidden = shape.bert.hidden
        self.itm_head = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, 2)
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: AptmCheckpoint, source: str) -> AptmModel:
        return cls(checkpoint.shape).load(checkpoint.state, source, "APTM")

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(pixels)
