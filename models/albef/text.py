"""The ALBEF family's BERT: transformers' embedding, self-attention and feed-forward modules, and a
cross-attention from the text to the image tokens whose keys and values are computed once per
image for all the pairs that share it.

transformers' ``BertLayer`` only takes cross-attention in a decoder, and its cross-attention
projects the image tokens again for every pair and reads them at the text's width; ALBEF's keys and
values come from the image width (``encoder_width``). So the cross-attention is a small module of
our own, with ALBEF's key names, and the parity tests compare it with the authors' outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: ALBEF's additive attention mask (``(1 - mask) * -10000``), not transformers' dtype minimum
MASKED = -10000.0


@dataclass(frozen=True)
class BertShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int
    #: layers [0, fusion_layer) are text-only in ALBEF's ``text`` mode (the contrastive features)
    fusion_layer: int
    #: the layers that carry ``crossattention.*`` (RaSa: from fusion_layer on; MARS: all of them)
    cross_layers: tuple[int, ...]
    encoder_width: int

    def config(self):
        from transformers import BertConfig

        config = BertConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.positions,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        config._attn_implementation = "eager"  # the authors' arithmetic: softmax(QK^T / sqrt(d) + mask) V
        return config


class _Projections(nn.Module):
    def __init__(self, hidden: int, encoder_width: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(encoder_width, hidden)
        self.value = nn.Linear(encoder_width, hidden)


class CrossAttention(nn.Module):
    """Attention from each text position to one image's tokens (no mask), then ALBEF's
    ``LayerNorm(x + dense(attention))``. Pairs arrive grouped by image: one matmul per image."""

    def __init__(self, config, encoder_width: int):
        from transformers.models.bert.modeling_bert import BertSelfOutput

        super().__init__()
        self.heads = config.num_attention_heads
        self.self = _Projections(config.hidden_size, encoder_width)
        self.output = BertSelfOutput(config)

    def memory(self, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of each image, (images, heads, tokens, head width): once per image."""
        images, tokens, _ = image_tokens.shape
        split = (images, tokens, self.heads, -1)
        key = self.self.key(image_tokens).view(split).transpose(1, 2)
        value = self.self.value(image_tokens).view(split).transpose(1, 2)
        return key, value

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor], groups: list[tuple[int, slice]]):
        key, value = memory
        pairs, length, hidden = x.shape
        query = self.self.query(x)
        attended = torch.empty_like(query)
        for image, rows in groups:
            count = rows.stop - rows.start
            # the group's text positions as one long query sequence per head: (heads, count * length, d)
            q = query[rows].reshape(count * length, self.heads, -1).transpose(0, 1)
            out = F.scaled_dot_product_attention(q, key[image], value[image])
            attended[rows] = out.transpose(0, 1).reshape(count, length, hidden)
        return self.output(attended, x)


class AlbefLayer(nn.Module):
    """One BERT layer: self-attention, cross-attention when the layer has it and image tokens are
    given, feed-forward; every sub-block is post-LN (``LayerNorm(x + f(x))``)."""

    def __init__(self, config, cross_width: int | None):
        from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

        super().__init__()
        self.attention = BertAttention(config)
        if cross_width is not None:
            self.crossattention = CrossAttention(config, cross_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    @property
    def has_cross_attention(self) -> bool:
        return hasattr(self, "crossattention")

    def forward(self, x, additive_mask, memory=None, groups=None):
        x = self.attention(x, additive_mask)[0]
        if memory is not None:
            x = self.crossattention(x, memory, groups)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, layers: list[AlbefLayer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class AlbefBert(nn.Module):
    """``text_encoder.bert``: embeddings and layers; ``text`` runs the text-only layers, ``fuse`` the
    layers from ``start`` on with each pair's image tokens."""

    def __init__(self, shape: BertShape):
        from transformers.models.bert.modeling_bert import BertEmbeddings

        super().__init__()
        self.shape = shape
        config = shape.config()
        self.embeddings = BertEmbeddings(config)
        cross = set(shape.cross_layers)
        self.encoder = _Encoder(
            [AlbefLayer(config, shape.encoder_width if i in cross else None) for i in range(shape.layers)]
        )

    @staticmethod
    def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return ((1.0 - mask[:, None, None, :].to(dtype)) * MASKED).to(dtype)

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ALBEF's ``mode='text'``: embeddings and layers [0, fusion_layer), no image."""
        x = self.embeddings(input_ids=ids)
        additive = self.additive(mask, x.dtype)
        for layer in self.encoder.layer[: self.shape.fusion_layer]:
            x = layer(x, additive)
        return x

    def fuse(
        self, x: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor, pair_image: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Layers [start, L) on hidden states ``x`` (one row per pair), each attending to its image
        (``image_tokens[pair_image]``; ``pair_image`` non-decreasing); the last hidden states."""
        groups = _groups(pair_image)
        additive = self.additive(mask, x.dtype)
        for layer in self.encoder.layer[start:]:
            memory = layer.crossattention.memory(image_tokens) if layer.has_cross_attention else None
            x = layer(x, additive, memory, groups)
        return x


def _groups(pair_image: torch.Tensor) -> list[tuple[int, slice]]:
    """(image, rows) for each run of equal values in a non-decreasing index."""
    images, counts = torch.unique_consecutive(pair_image, return_counts=True)
    if len(images) != len(torch.unique(pair_image)):
        raise ValueError("pairs must arrive grouped by image")
    ends = torch.cumsum(counts, 0).tolist()
    starts = [0, *ends[:-1]]
    return [(int(i), slice(s, e)) for i, s, e in zip(images.tolist(), starts, ends, strict=True)]
