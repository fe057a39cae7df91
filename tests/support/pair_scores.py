"""A cross-encoder's matching scores of arbitrary (text, image) pairs through its grouped pair path."""

from __future__ import annotations

import torch


def match_pairs(model, images: dict, texts: dict, text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
    """Scores of pairs (text_rows[p], image_rows[p]), sorted by image for ``model.match`` and put back."""
    order = torch.argsort(image_rows, stable=True)
    distinct, pair_image = torch.unique(image_rows[order], return_inverse=True)
    rows = {key: value[text_rows[order]] for key, value in texts.items() if key != "embedding"}
    with torch.no_grad():
        scores = model.match(images["tokens"][distinct], rows, pair_image)
    out = torch.empty_like(scores)
    out[order] = scores
    return out


def shortlist_scores(model, images: dict, texts: dict, index: torch.Tensor, direction: str) -> torch.Tensor:
    """(queries, k) scores of a shortlist: each text's k images (``t2i``) or each image's k texts."""
    queries = torch.arange(len(index)).repeat_interleave(index.shape[1])
    rows = (queries, index.reshape(-1)) if direction == "t2i" else (index.reshape(-1), queries)
    return match_pairs(model, images, texts, *rows).view_as(index)
