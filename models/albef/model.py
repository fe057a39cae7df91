"""What every ALBEF-family model computes from its parts: contrastive (ITC) features for the
shortlist and the image-text matching (ITM) logit of (text, image) pairs for the re-ranking."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tbps_bench.checkpoints import load_state
from tbps_models.albef.text import AlbefBert, BertShape


class CrossEncoder(nn.Module):
    """Subclasses build the image encoder (``image_tokens``), ``vision_proj`` and ``itm_head`` under
    their checkpoint's key names; ``text_encoder.bert`` and ``text_proj`` are built here."""

    #: MARS runs the matching from the token ids through every layer; the others continue from the
    #: text-only layers' states
    match_from_ids: bool = False

    def __init__(self, bert: BertShape, embed_dim: int):
        super().__init__()
        self.text_encoder = nn.Module()
        self.text_encoder.bert = AlbefBert(bert)
        self.text_proj = nn.Linear(bert.hidden, embed_dim)

    def load(self, state: dict[str, torch.Tensor], source: str, what: str) -> CrossEncoder:
        """The checkpoint's used entries, strictly: missing, unexpected and mis-shaped keys by name."""
        # transformers keeps token-type and position buffers of its own, which need not be in the file
        optional = tuple(k for k in self.state_dict() if k.endswith(("token_type_ids", "position_ids")))
        load_state(self, state, source, what, optional=optional)
        return self.eval()

    @property
    def bert(self) -> AlbefBert:
        return self.text_encoder.bert

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding``: the unit ITC vector of token 0; ``tokens``: the cross-attention memory."""
        tokens = self.image_tokens(pixels)
        return {"embedding": F.normalize(self.vision_proj(tokens[:, 0]), dim=-1), "tokens": tokens}

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``embedding``: the unit ITC vector of ``[CLS]`` after the text-only layers; and what the
        matching reads: those layers' states, or (``match_from_ids``) the token ids."""
        states = self.bert.text(ids, mask)
        features = {"embedding": F.normalize(self.text_proj(states[:, 0]), dim=-1), "mask": mask}
        features["ids" if self.match_from_ids else "states"] = ids if self.match_from_ids else states
        return features

    def match(self, image_tokens: torch.Tensor, texts: dict[str, torch.Tensor], pair_image: torch.Tensor):
        """The ITM "match" logit (``itm_head(...)[:, 1]``, no softmax) of each pair: text row p with
        image ``pair_image[p]`` of ``image_tokens``."""
        mask = texts["mask"]
        length = int(mask.sum(1).max())
        x, start = self.matching_input(texts, length)
        return self.itm_head(self.bert.fuse(x, mask[:, :length], image_tokens, pair_image, start))[:, 1]

    def matching_input(self, texts: dict[str, torch.Tensor], length: int) -> tuple[torch.Tensor, int]:
        """The hidden states the matching starts from, the first ``length`` positions, and the layer
        it starts at: the embeddings of the ids at layer 0 (``match_from_ids``), or the text-only
        layers' states at ``fusion_layer``."""
        if self.match_from_ids:
            return self.bert.embeddings(input_ids=texts["ids"][:, :length]), 0
        return texts["states"][:, :length], self.bert.shape.fusion_layer
