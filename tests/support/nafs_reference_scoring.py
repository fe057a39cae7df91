"""Reference NAFS local scorers for tests and benchmarks: the definition per pair, and the
released evaluation's per-text loop (the benchmark's baseline). Production code uses the batched
scorer in ``tbps_models.nafs.scoring``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tbps_models.nafs.scoring import EPS, LEAKY_SLOPE, _l2norm


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


def local_similarity_official_loop(
    queries: torch.Tensor,
    values: torch.Tensor,
    keys: torch.Tensor,
    text_values: torch.Tensor,
    lengths: torch.Tensor,
    lambda_softmax: float = 20.0,
    text_to_image: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The released evaluation's shape of computation, kept as the benchmark's baseline: a Python
    loop over texts; each text is repeated for every image and attended in both directions, each
    direction with its own products and layout copies. The text-to-image direction (words attend
    over regions; the release computes it and discards it) is returned too with ``text_to_image``."""
    n_images = queries.shape[0]
    out = torch.empty(n_images, keys.shape[0], dtype=queries.dtype)
    discarded = torch.empty_like(out)
    query_unit = _l2norm(queries)
    for j, n in enumerate(lengths.clamp(max=keys.shape[1]).tolist()):
        key = _l2norm(keys[j, :n]).repeat(n_images, 1, 1)
        text_value = text_values[j, :n].repeat(n_images, 1, 1)
        # image-to-text: each region attends over the words (the score)
        weights = F.leaky_relu(torch.bmm(key, query_unit.transpose(1, 2)), LEAKY_SLOPE)  # images x words x regions
        weights = weights / (weights.norm(dim=2, keepdim=True) + EPS)
        weights = torch.softmax(weights.transpose(1, 2).contiguous() * lambda_softmax, dim=2)
        attended = _l2norm(torch.bmm(text_value.transpose(1, 2), weights.transpose(1, 2).contiguous()).transpose(1, 2))
        out[:, j] = F.cosine_similarity(values, attended, dim=2, eps=EPS).mean(1)
        # text-to-image: each word attends over the regions
        weights = F.leaky_relu(torch.bmm(key, query_unit.transpose(1, 2)), LEAKY_SLOPE)
        weights = weights / (weights.norm(dim=1, keepdim=True) + EPS)  # across words
        weights = torch.softmax(weights * lambda_softmax, dim=2)
        attended_image = _l2norm(torch.bmm(weights, values))  # images x words x d
        discarded[:, j] = F.cosine_similarity(text_value, attended_image, dim=2, eps=EPS).mean(1)
    return (out, discarded) if text_to_image else out
