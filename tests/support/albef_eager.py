"""The authors' arithmetic for an ALBEF-family cross-encoder's matching layers, written out as their
BERT code computes it: every pair padded to the same length, every position through every layer,
each pair's own image tokens projected to keys and values, ``softmax(q k^T / sqrt(d)) v``. Run under
``torch.autocast`` it is what their code computes in reduced precision."""

from __future__ import annotations

import math

import torch


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Their cross-attention, unmasked: ``softmax(q k^T / sqrt(d)) v`` over the last two dimensions."""
    return torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1) @ value


def eager_match(model, x: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor, start: int) -> torch.Tensor:
    """The ITM "match" logit of each pair: padded hidden states ``x`` (pairs, length, hidden) with
    ``mask``, through layers [start, L) of ``model.bert``, pair p attending to ``image_tokens[p]``."""
    bert = model.bert
    pairs, length = x.shape[:2]
    additive = bert.additive(mask, x.dtype)
    for layer in bert.encoder.layer[start:]:
        x = layer.attention(x, additive)[0]
        if layer.has_cross_attention:
            cross = layer.crossattention

            def split(t, heads=cross.heads):
                return t.view(pairs, t.shape[1], heads, -1).transpose(1, 2)

            q = split(cross.self.query(x))
            k, v = split(cross.self.key(image_tokens)), split(cross.self.value(image_tokens))
            x = cross.output(eager_attention(q, k, v).transpose(1, 2).reshape(pairs, length, -1), x)
        x = layer.output(layer.intermediate(x), x)
    return model.itm_head(x[:, 0])[:, 1]
