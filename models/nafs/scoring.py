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


def local_similarity_pair(
    query: torch.Tensor, value: torch.Tensor, key: torch.Tensor, text_value: torch.Tensor, lambda_softmax: float
) -> torch.Tensor:
    """One image (R x d) and one text (n x d, valid rows only), written as the definition reads."""
    c = _l2norm(query) @ _l2norm(key).T  # R x n
    s = F.leaky_relu(c, LEAKY_SLOPE)
    s = s / (s.norm(dim=0, keepdim=True) + EPS)
    attention = torch.softmax(lambda_softmax * s, dim=1)
    attended = _l2norm(attention @ text_value)  # R x d
    return F.cosine_similarity(value, attended, dim=1, eps=EPS).mean()


def local_similarity_per_pair(
    queries: torch.Tensor,
    values: torch.Tensor,
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 20.0,
) -> torch.Tensor:
    """Straightforward reference: a Python loop over every pair (images x texts)."""
    out = torch.empty(queries.shape[0], keys.shape[0], dtype=queries.dtype)
    for j, n in enumerate(lengths.clamp(max=keys.shape[1]).tolist()):
        for i in range(queries.shape[0]):
            out[i, j] = local_similarity_pair(queries[i], values[i], keys[j, :n], text_values[j, :n], lambda_softmax)
    return out


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

    queries, values: images x R x d; keys, text_values: texts x L x d; lengths: valid rows per text
    (capped at L). Memory is bounded by one (group x length x tile x R) block."""
    n_images, regions, _ = queries.shape
    n_texts = keys.shape[0]
    out = torch.empty(n_images, n_texts, dtype=torch.float32, device=queries.device)
    if n_images == 0 or n_texts == 0:
        return out
    lengths = lengths.to(keys.device).clamp(min=1, max=keys.shape[1])
    query_unit = _l2norm(queries)
    value_unit = values / values.norm(dim=-1, keepdim=True).clamp_min(EPS)
    # in-place element-wise steps save memory traffic at evaluation; training needs the autograd graph
    inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (queries, values, keys, text_values)))
    order = torch.argsort(lengths, stable=True)
    for start in range(0, n_texts, texts_per_group):
        group = order[start : start + texts_per_group]
        padded = int(lengths[group].max())
        valid = torch.arange(padded, device=keys.device)[None, :] < lengths[group][:, None]  # g x P
        group_keys = _l2norm(keys[group, :padded])
        group_values = text_values[group, :padded] * valid[..., None]
        gram = group_values @ group_values.transpose(1, 2)  # g x P x P
        g = len(group)
        keys_flat = group_keys.reshape(g * padded, -1)
        values_flat = group_values.reshape(g * padded, -1)
        for first in range(0, n_images, images_per_tile):
            q = query_unit[first : first + images_per_tile]
            m = q.shape[0]
            # g x P x (m R): queries x keys as one matrix product
            weights = (keys_flat @ q.reshape(m * regions, -1).T).view(g, padded, m, regions)
            weights = F.leaky_relu_(weights, LEAKY_SLOPE) if inplace else F.leaky_relu(weights, LEAKY_SLOPE)
            scale = lambda_softmax / (torch.linalg.vector_norm(weights, dim=-1, keepdim=True) + EPS)
            weights = weights.mul_(scale).exp_() if inplace else (weights * scale).exp()
            weights = weights.view(g, padded, m * regions)
            v = value_unit[first : first + images_per_tile].reshape(m * regions, -1)
            dots = (values_flat @ v.T).view(g, padded, m * regions)  # values x text values
            numerator = (weights * dots).sum(1)  # g x (m R)
            squared_norm = (torch.bmm(gram, weights) * weights).sum(1)
            cosines = numerator / squared_norm.clamp_min(0).sqrt().clamp_min(EPS)
            out[first : first + m, group] = cosines.view(g, m, regions).mean(-1).T.to(out.dtype)
    return out


def local_similarity_official_loop(
    queries: torch.Tensor,
    values: torch.Tensor,
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 20.0,
) -> torch.Tensor:
    """The released evaluation's shape of computation, kept as the benchmark's baseline: a Python
    loop over texts, each scored against all images at once in both attention directions (the
    text-to-image one is computed and thrown away, as there)."""
    n_images = queries.shape[0]
    out = torch.empty(n_images, keys.shape[0], dtype=queries.dtype)
    query_unit = _l2norm(queries)
    for j, n in enumerate(lengths.clamp(max=keys.shape[1]).tolist()):
        key = _l2norm(keys[j, :n]).expand(n_images, n, -1)
        text_value = text_values[j, :n].expand(n_images, n, -1)
        c = torch.bmm(query_unit, key.transpose(1, 2))  # images x R x n
        s = F.leaky_relu(c, LEAKY_SLOPE)
        # image-to-text: regions attend over words
        s_i2t = s / (s.norm(dim=1, keepdim=True) + EPS)
        attended = _l2norm(torch.bmm(torch.softmax(lambda_softmax * s_i2t, dim=2), text_value))
        out[:, j] = F.cosine_similarity(values, attended, dim=2, eps=EPS).mean(1)
        # text-to-image: words attend over regions (discarded)
        s_t2i = s / (s.norm(dim=2, keepdim=True) + EPS)
        attended_image = _l2norm(torch.bmm(torch.softmax(lambda_softmax * s_t2i, dim=1).transpose(1, 2), values))
        F.cosine_similarity(text_value, attended_image, dim=2, eps=EPS).mean(1)
    return out
