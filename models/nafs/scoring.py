"""The local term of the NAFS score, S_loc(I, T), for every image x text pair.

Per pair (regions r, text elements w < n)::

    c_rw = <q_r/|q_r|, k_w/|k_w|>;   s_rw = lrelu(c_rw) / |lrelu(c_.w)|   (norm across regions)
    a_rw = softmax_w(lambda * s_rw); t_r = sum_w a_rw u_w;  S_loc = mean_r cos(v_r, t_r)

The fast path never materialises t_r (a d-vector per pair and region). The cosine is invariant to
the scale of t_r, so the softmax denominator is not needed: with E_rw = exp(lambda * s_rw) (bounded
by exp(lambda), as |s| <= 1), v.t = sum_w E_rw (v.u_w) and |t|^2 = E_r^T (U U^T) E_r. The two
contractions with d (queries x keys, values x text values) become large matrix products over a
block of images x a group of texts of similar length; padding rows of U are zero, so they drop out
of both sums without masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
LEAKY_SLOPE = 0.1


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def _text_group(
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    starts: torch.Tensor | None,
    group: torch.Tensor,
):
    """Unit keys, zero-padded values and value Gram matrices of a group of texts, cut to its longest.

    ``keys`` / ``text_values`` are padded (texts x L x d) or packed ((sum of lengths) x d, each
    text's rows in turn, the first at ``starts``): stored at their true lengths, a split's text
    features take the memory of their tokens, not of its longest caption's."""
    padded = int(lengths[group].max())
    valid = torch.arange(padded, device=keys.device)[None, :] < lengths[group][:, None]
    if starts is not None:
        rows = (starts[group][:, None] + torch.arange(padded, device=keys.device)[None, :]).clamp(max=len(keys) - 1)
        group_keys, group_values = keys[rows], text_values[rows]
    else:
        group_keys, group_values = keys[group, :padded], text_values[group, :padded]
    group_values = group_values * valid[..., None]
    return _l2norm(group_keys), group_values, group_values @ group_values.transpose(1, 2)


def _pooled_cosines(
    weights: torch.Tensor, dots: torch.Tensor, gram: torch.Tensor, lambda_softmax: float, inplace: bool
) -> torch.Tensor:
    """From c (group x P x images x R) and v.u (same shape) to S_loc (group x images)."""
    g, padded, images, regions = weights.shape
    weights = F.leaky_relu_(weights, LEAKY_SLOPE) if inplace else F.leaky_relu(weights, LEAKY_SLOPE)
    scale = lambda_softmax / (torch.linalg.vector_norm(weights, dim=-1, keepdim=True) + EPS)
    weights = weights.mul_(scale).exp_() if inplace else (weights * scale).exp()
    weights = weights.view(g, padded, images * regions)
    numerator = (weights * dots.view(g, padded, images * regions)).sum(1)
    squared_norm = (torch.bmm(gram, weights) * weights).sum(1)
    cosines = numerator / squared_norm.clamp_min(0).sqrt().clamp_min(EPS)
    return cosines.view(g, images, regions).mean(-1)


def _prepare(queries, values, keys, text_values, lengths):
    if keys.dim() == 2:  # packed: the lengths are the rows each text holds
        lengths = lengths.to(keys.device)
        if int(lengths.sum()) != keys.shape[0] or bool((lengths < 1).any()):
            total = int(lengths.sum())
            raise ValueError(f"packed text features hold {keys.shape[0]} rows; lengths (>= 1) sum to {total}")
        starts = torch.cumsum(lengths, 0) - lengths
    else:
        lengths = lengths.to(keys.device).clamp(min=1, max=keys.shape[1])
        starts = None
    # in-place element-wise steps save memory traffic at evaluation; training needs the autograd graph
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (queries, values, keys, text_values)))
    value_unit = values / values.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return _l2norm(queries), value_unit, lengths, starts, inplace, torch.argsort(lengths, stable=True)


def local_similarity(
    queries: torch.Tensor,
    values: torch.Tensor,
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 20.0,
    texts_per_group: int = 64,
    images_per_tile: int = 200,
) -> torch.Tensor:
    """S_loc for every pair (images x texts), batched; same numbers as ``local_similarity_per_pair``.

    queries, values: images x R x d; keys, text_values: texts x L x d, or packed (see ``_text_group``);
    lengths: valid rows per text (capped at L). Memory is bounded by one (group x length x tile x R)
    block."""
    n_images, regions, dim = queries.shape
    n_texts = len(lengths)
    out = torch.empty(n_images, n_texts, dtype=torch.float32, device=queries.device)
    if n_images == 0 or n_texts == 0:
        return out
    query_unit, value_unit, lengths, starts, inplace, order = _prepare(queries, values, keys, text_values, lengths)
    for start in range(0, n_texts, texts_per_group):
        group = order[start : start + texts_per_group]
        group_keys, group_values, gram = _text_group(keys, text_values, lengths, starts, group)
        g, padded = group_keys.shape[:2]
        keys_flat, values_flat = group_keys.reshape(g * padded, dim), group_values.reshape(g * padded, dim)
        for first in range(0, n_images, images_per_tile):
            q = query_unit[first : first + images_per_tile].reshape(-1, dim)
            v = value_unit[first : first + images_per_tile].reshape(-1, dim)
            # the two contractions with d, each one matrix product over the whole block
            weights = (keys_flat @ q.T).view(g, padded, -1, regions)
            dots = (values_flat @ v.T).view(g, padded, -1, regions)
            local = _pooled_cosines(weights, dots, gram, lambda_softmax, inplace)
            out[first : first + weights.shape[2], group] = local.T.to(out.dtype)
    return out


def local_similarity_candidates(
    queries: torch.Tensor,
    values: torch.Tensor,
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    candidates: torch.Tensor,
    lambda_softmax: float = 20.0,
    texts_per_group: int = 16,
) -> torch.Tensor:
    """S_loc of each text with its own candidate images only (texts x K, image indices) -> texts x K."""
    n_texts, k = candidates.shape
    regions, dim = queries.shape[1:]
    out = torch.empty(n_texts, k, dtype=torch.float32, device=queries.device)
    query_unit, value_unit, lengths, starts, inplace, order = _prepare(queries, values, keys, text_values, lengths)
    for start in range(0, n_texts, texts_per_group):
        group = order[start : start + texts_per_group]
        group_keys, group_values, gram = _text_group(keys, text_values, lengths, starts, group)
        g, padded = group_keys.shape[:2]
        chosen = candidates[group].to(queries.device)
        q = query_unit[chosen].reshape(g, k * regions, dim)
        v = value_unit[chosen].reshape(g, k * regions, dim)
        weights = torch.bmm(group_keys, q.transpose(1, 2)).view(g, padded, k, regions)
        dots = torch.bmm(group_values, v.transpose(1, 2)).view(g, padded, k, regions)
        out[group] = _pooled_cosines(weights, dots, gram, lambda_softmax, inplace).to(out.dtype)
    return out
