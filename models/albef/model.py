"""An ALBEF-family model from a released checkpoint: contrastive (ITC) features for the shortlist,
and the image-text matching (ITM) logit of (text, image) pairs for the re-ranking."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tbps_bench.checkpoints import load_state
from tbps_models.albef.checkpoint import AlbefCheckpoint, AlbefShape, Family
from tbps_models.albef.text import AlbefBert
from tbps_models.albef.vision import build_vit
from tbps_models.layouts import DISPLAY


class AlbefModel(nn.Module):
    """``visual_encoder``, ``vision_proj``, ``text_encoder.bert``, ``text_proj``, ``itm_head``: the
    checkpoint's own key names, so the state dict loads as stored."""

    def __init__(self, shape: AlbefShape):
        super().__init__()
        self.shape = shape
        self.visual_encoder = build_vit(shape.vit)
        self.vision_proj = nn.Linear(shape.vit.width, shape.embed_dim)
        self.text_encoder = nn.Module()
        self.text_encoder.bert = AlbefBert(shape.bert)
        self.text_proj = nn.Linear(shape.bert.hidden, shape.embed_dim)
        self.itm_head = nn.Linear(shape.bert.hidden, 2)

    @classmethod
    def from_checkpoint(cls, checkpoint: AlbefCheckpoint, source: str) -> AlbefModel:
        model = cls(checkpoint.shape)
        # transformers keeps token-type and position buffers of its own, which need not be in the file
        optional = tuple(k for k in model.state_dict() if k.endswith(("token_type_ids", "position_ids")))
        load_state(model, checkpoint.state, source, DISPLAY[checkpoint.shape.family.value], optional=optional)
        return model.eval()

    @property
    def family(self) -> Family:
        return self.shape.family

    def image_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding``: the unit ITC vector; ``tokens``: every output token, the cross-attention memory."""
        tokens = self.visual_encoder.forward_features(pixels)
        return {"embedding": F.normalize(self.vision_proj(tokens[:, 0]), dim=-1), "tokens": tokens}

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding``: the unit ITC vector of ``[CLS]`` after the text-only layers; what the
        matching reads: RaSa the text-mode hidden states, MARS the token ids (it runs every layer)."""
        states = self.text_encoder.bert.text(ids, mask)
        features = {"embedding": F.normalize(self.text_proj(states[:, 0]), dim=-1), "mask": mask}
        if self.family is Family.RASA:
            features["states"] = states
        else:
            features["ids"] = ids
        return features

    def match(self, image_tokens: torch.Tensor, texts: dict[str, torch.Tensor], pair_image: torch.Tensor):
        """The ITM "match" logit (``itm_head(...)[:, 1]``, no softmax) of each pair: text row p with
        image ``pair_image[p]`` of ``image_tokens``."""
        mask = texts["mask"]
        length = int(mask.sum(1).max())
        mask = mask[:, :length]
        bert = self.text_encoder.bert
        if self.family is Family.RASA:
            x, start = texts["states"][:, :length], bert.shape.fusion_layer
        else:
            x, start = bert.embeddings(input_ids=texts["ids"][:, :length]), 0
        return self.itm_head(bert.fuse(x, mask, image_tokens, pair_image, start))[:, 1]
