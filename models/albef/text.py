"""The ALBEF family's BERT: transformers' embedding, self-attention and feed-forward modules, and a
cross-attention from the text to the image tokens whose keys and values are computed once per
image for all the pairs that share it.

transformers' ``BertLayer`` only takes cross-attention in a decoder, and its cross-attention
projects the image tokens again for every pair and reads them at the text's width; ALBEF's keys and
values come from the image width (``encoder_width``). So the cross-attention is a small module of
our own, with ALBEF's key names, and the parity tests compare it with the authors' outputs."""

from __future__ import annotations

import math
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
    ``LayerNorm(x + dense(attention))``. Pairs arrive grouped by image: each image's keys and values
    are read by all its pairs' positions at once (``_attend``, or ``_attend_in_blocks`` in reduced
    precision on CPU)."""

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
        # contiguous once here, not once per block of queries that reads them
        key = self.self.key(image_tokens).view(split).transpose(1, 2).contiguous()
        value = self.self.value(image_tokens).view(split).transpose(1, 2).contiguous()
        return key, value

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor], groups: list[tuple[int, slice]]):
        """``x``: (rows, hidden) text positions; ``groups``: (image, rows) runs that attend to one image."""
        key, value = memory
        query = self.self.query(x)
        attend = _attend_in_blocks if query.device.type == "cpu" and query.dtype != torch.float32 else _attend
        attended = torch.empty_like(query)
        for image, rows in groups:
            attend(query[rows], key[image], value[image], attended[rows])
        return self.output(attended, x)


def _heads(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """(rows, heads * width) as (heads, rows, width), a view."""
    return rows.view(rows.shape[0], heads, -1).transpose(0, 1)


def _rows(per_head: torch.Tensor) -> torch.Tensor:
    """(heads, rows, width) back to (rows, heads * width)."""
    return per_head.transpose(0, 1).flatten(1)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> None:
    """``softmax(q k^T / sqrt(d)) v`` of one image's query rows, into ``out`` (rows, heads * width):
    torch's fused attention, which keeps the scores in fp32."""
    out.copy_(_rows(F.scaled_dot_product_attention(_heads(query, key.shape[0]), key, value)))


#: query rows a block in ``_attend_in_blocks``: one block's scores (12 heads x 128 rows x 577 keys
#: in bf16, 1.7 MB) stay in the cores' caches between the two products
ROWS_A_BLOCK = 128


def _attend_in_blocks(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, out: torch.Tensor) -> None:
    """The same attention written out (``q k^T``, softmax, ``v``) a block of rows at a time, for
    bf16 / fp16 on CPU. There torch's fused kernel runs its products at the fp32 rate; these
    products run at the reduced-precision rate (docs/benchmarks.md). The scores are rounded to the
    reduced precision before the softmax, as the eager arithmetic of the authors' code and of
    transformers' BERT is under autocast."""
    heads, width = key.shape[0], key.shape[-1]
    keys = key.transpose(1, 2)
    for start in range(0, query.shape[0], ROWS_A_BLOCK):
        block = slice(start, start + ROWS_A_BLOCK)
        weights = torch.softmax(torch.bmm(_heads(query[block], heads), keys).div_(math.sqrt(width)), dim=-1)
        out[block] = _rows(torch.bmm(weights, value))


@dataclass(frozen=True)
class Packing:
    """The real (unmasked) positions of a batch of padded sequences, one row each: the linear
    layers, which are most of the work, run on these rows alone; attention unpacks them."""

    pairs: int
    length: int
    positions: torch.Tensor  # flat indices (pair * length + position) of the real tokens, in order
    first: torch.Tensor  # the packed row of each pair's first token
    counts: torch.Tensor  # real tokens per pair

    @classmethod
    def of(cls, mask: torch.Tensor) -> Packing:
        real = mask.bool()
        counts = real.sum(1)
        first = torch.cumsum(counts, 0) - counts
        return cls(mask.shape[0], mask.shape[1], torch.nonzero(real.reshape(-1)).reshape(-1), first, counts)

    # index_select and index_copy_ rather than subscripts: the same rows, in fewer passes on CPU
    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.reshape(self.pairs * self.length, -1).index_select(0, self.positions)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        padded = packed.new_zeros(self.pairs * self.length, packed.shape[-1])
        return padded.index_copy_(0, self.positions, packed).view(self.pairs, self.length, -1)

    def token_groups(self, pair_groups: list[tuple[int, slice]]) -> list[tuple[int, slice]]:
        """Pair runs (image, pairs) as runs of packed rows."""
        ends = torch.cumsum(self.counts, 0).tolist()
        starts = [0, *ends[:-1]]
        return [(image, slice(starts[rows.start], ends[rows.stop - 1])) for image, rows in pair_groups]


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

    def forward(self, x, additive_mask):
        """Text only, on padded (batch, length, hidden) states: transformers' modules as they are."""
        x = self.attention(x, additive_mask)[0]
        return self.output(self.intermediate(x), x)

    def packed(self, x, packing: Packing, additive_mask, memory, groups, first_only: bool):
        """Packed (real tokens, hidden) states; ``groups`` (image, packed rows). ``first_only``: the
        output at each pair's first position (``[CLS]``) alone, (pairs, hidden): every sub-block but
        the self-attention's keys and values is per position, so a matching pass's last layer
        computes one row per pair instead of one per token."""
        queries = packing.first if first_only else None
        attended = self._self_attention(x, packing, additive_mask, queries)
        x = self.attention.output(attended, x if queries is None else x[queries])
        if memory is not None:
            x = self.crossattention(x, memory, groups_by_pair(groups, packing) if first_only else groups)
        return self.output(self.intermediate(x), x)

    def _self_attention(self, x, packing: Packing, additive_mask, queries: torch.Tensor | None) -> torch.Tensor:
        """transformers' ``BertSelfAttention`` weights and eager arithmetic
        (``softmax(q k^T / sqrt(d) + mask) v``) on packed rows; queries for ``queries`` rows only. The
        projections that read every row run as one product with their weights side by side: one pass
        over ``x`` (and, under autocast, one cast of it) instead of three."""
        module = self.attention.self
        heads, width = module.num_attention_heads, module.attention_head_size
        every_row = [module.query, module.key, module.value] if queries is None else [module.key, module.value]
        weight = torch.cat([projection.weight for projection in every_row])
        bias = torch.cat([projection.bias for projection in every_row])
        padded = packing.unpack(F.linear(x, weight, bias))
        # (pairs, length, projection, heads, width) -> one (pairs, heads, length, width) per projection
        split = padded.view(packing.pairs, -1, len(every_row), heads, width).permute(2, 0, 3, 1, 4).unbind(0)
        if queries is None:
            query, key, value = split
        else:
            key, value = split
            query = module.query(x[queries]).view(packing.pairs, 1, heads, width).transpose(1, 2)
        weights = torch.softmax(query @ key.transpose(2, 3) * width**-0.5 + additive_mask, dim=-1)
        context = (weights @ value).transpose(1, 2).reshape(packing.pairs, -1, heads * width)
        return context[:, 0] if queries is not None else packing.pack(context)


def groups_by_pair(token_groups: list[tuple[int, slice]], packing: Packing) -> list[tuple[int, slice]]:
    """Runs of packed token rows as runs of pairs (each pair's rows are contiguous)."""
    starts = {int(row): pair for pair, row in enumerate(packing.first.tolist())}
    ends = {int(row): pair + 1 for pair, row in enumerate((packing.first + packing.counts).tolist())}
    return [(image, slice(starts[rows.start], ends[rows.stop])) for image, rows in token_groups]


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
        """Layers [start, L) on hidden states ``x`` (one padded row per pair), each pair attending to
        its image (``image_tokens[pair_image]``; ``pair_image`` non-decreasing); the last layer's
        hidden state at the first position, (pairs, hidden). Padded positions are dropped: masked
        keys add exactly zero to the attention, and no output reads them."""
        packing = Packing.of(mask)
        groups = packing.token_groups(_groups(pair_image))
        additive = self.additive(mask, x.dtype)
        x = packing.pack(x)
        layers = self.encoder.layer[start:]
        for depth, layer in enumerate(layers):
            memory = layer.crossattention.memory(image_tokens) if layer.has_cross_attention else None
            x = layer.packed(x, packing, additive, memory, groups, first_only=depth == len(layers) - 1)
        return x


def _groups(pair_image: torch.Tensor) -> list[tuple[int, slice]]:
    """(image, rows) for each run of equal values in a non-decreasing index."""
    images, counts = torch.unique_consecutive(pair_image, return_counts=True)
    if len(images) != len(torch.unique(pair_image)):
        raise ValueError("pairs must arrive grouped by image")
    ends = torch.cumsum(counts, 0).tolist()
    starts = [0, *ends[:-1]]
    return [(int(i), slice(s, e)) for i, s, e in zip(images.tolist(), starts, ends, strict=True)]
