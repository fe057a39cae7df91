"""The definition of the metrics in one screen: sort the gallery by (-score, index) and read off the
positives' ranks. Slow and obviously correct; the counting kernel is tested against it, and so is
the naive full-argsort pipeline most codebases use (``naive_full_argsort``)."""

from __future__ import annotations

import torch


def brute_force(scores: torch.Tensor, query_ids, gallery_ids) -> dict[str, list[float]]:
    """Per query: sort the gallery by (-score, index) in Python and read off the positives' ranks."""
    first, ap, inp = [], [], []
    for q in range(scores.shape[0]):
        row = scores[q].tolist()
        order = sorted(range(len(row)), key=lambda g: (-row[g], g))
        ranks = [r + 1 for r, g in enumerate(order) if int(gallery_ids[g]) == int(query_ids[q])]
        first.append(ranks[0])
        ap.append(sum((j + 1) / r for j, r in enumerate(ranks)) / len(ranks))
        inp.append(len(ranks) / ranks[-1])
    return {"first": first, "ap": ap, "inp": inp}


def naive_full_argsort(text: torch.Tensor, image: torch.Tensor, text_ids, image_ids) -> dict[str, dict[str, float]]:
    """The common approach: full matrix, full argsort, gathered ids, cumsum, Python loop for mINP."""
    out = {}
    for name, queries, gallery, qid, gid in (
        ("t2i", text, image, text_ids, image_ids),
        ("i2t", image, text, image_ids, text_ids),
    ):
        scores = queries @ gallery.T
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        matches = (gid[order] == qid[:, None]).to(torch.int64)
        cmc = matches.cumsum(1)
        hits = cmc.clamp(max=1)
        positions = torch.arange(1, matches.shape[1] + 1)
        precision = cmc / positions
        ap = (precision * matches).sum(1) / matches.sum(1)
        inp = []
        for row in range(matches.shape[0]):
            last = int(torch.nonzero(matches[row])[-1]) + 1
            inp.append(float(matches[row].sum()) / last)
        out[name] = {
            **{f"R{k}": 100.0 * float(hits[:, k - 1].double().mean()) for k in (1, 5, 10)},
            "mAP": 100.0 * float(ap.double().mean()),
            "mINP": 100.0 * sum(inp) / len(inp),
        }
    return out
