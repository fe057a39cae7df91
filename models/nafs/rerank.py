"""Re-ranking by visual neighbours (RVN), on a (texts x images) score matrix.

``rvn``: a text's top-K images are compared with each gallery image's K visual neighbours (image
indices with image indices); the Jaccard overlap is added to the score.
``rvn-official``: the released code's variant, kept for comparison only. It compares an image's
top-K *text* indices with image indices, so its effect depends on the order of the test list.
"""

from __future__ import annotations

import torch

RERANK_CHOICES = ("none", "rvn", "rvn-official")


def _membership(indices: torch.Tensor, width: int) -> torch.Tensor:
    members = torch.zeros(indices.shape[0], width)
    return members.scatter_(1, indices, 1.0)


def _jaccard(first: torch.Tensor, second_members: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """|A_i & B_j| / |A_i | B_j| for index sets A (rows of ``first``) and B (membership rows)."""
    columns = second_members.T.contiguous()  # index x sets
    out = torch.empty(first.shape[0], second_members.shape[0])
    for start in range(0, first.shape[0], chunk):
        overlap = columns[first[start : start + chunk]].sum(1)
        out[start : start + chunk] = overlap / (2 * k - overlap)
    return out


def visual_neighbours(image_global: torch.Tensor, k: int) -> torch.Tensor:
    unit = torch.nn.functional.normalize(image_global.float(), dim=1)
    return (unit @ unit.T).topk(k, dim=1).indices


def rerank_rvn(scores: torch.Tensor, image_global: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Index-consistent RVN on ``scores`` (texts x images)."""
    n_images = scores.shape[1]
    k = min(k, n_images)
    neighbours = _membership(visual_neighbours(image_global, k), n_images)
    return scores + _jaccard(scores.topk(k, dim=1).indices, neighbours, k)


def rerank_rvn_official(scores: torch.Tensor, image_global: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The released variant on ``scores`` (texts x images); see the module docstring."""
    n_texts, n_images = scores.shape
    k = min(k, n_images, n_texts)
    image_major = scores.T  # the released code works on images x texts
    width = max(n_texts, n_images)
    text_choices = image_major.topk(k, dim=1).indices  # text indices, per image
    neighbours = _membership(visual_neighbours(image_global, k), width)
    jaccard = _jaccard(text_choices, neighbours, k)  # images x images
    columns = min(n_images, n_texts)
    reranked = image_major.clone()
    reranked[:, :columns] += jaccard[:, :columns]
    return reranked.T.contiguous()
