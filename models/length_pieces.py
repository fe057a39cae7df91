"""A text encoder on CPU runs fastest on small pieces of rows sorted by length, each cut to its
longest row: the activations of a piece stay in cache, and short rows carry no long padding."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: tokens (rows x longest) per piece on CPU: small enough for a piece's activations to stay in cache
#: (MiniLM's time a caption: docs/benchmarks.md)
CPU_TOKENS_PER_PIECE = 1024


def length_pieces(lengths: list[int], budget: float) -> list[slice]:
    """Consecutive rows (sorted by length, ascending) cut so that rows x longest <= budget."""
    pieces, start = [], 0
    for stop in range(1, len(lengths) + 1):
        if stop == len(lengths) or (stop + 1 - start) * lengths[stop] > budget:
            pieces.append(slice(start, stop))
            start = stop
    return pieces


def in_length_pieces(
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, budget: float
) -> torch.Tensor:
    """``encode(ids, mask)`` on the rows sorted by length, in pieces of at most ``budget`` tokens,
    each cut to its longest row; the outputs come back in the rows' own order."""
    lengths, order = mask.sum(-1).clamp_min(1).sort(stable=True)
    outputs = []
    for rows in length_pieces(lengths.tolist(), budget):
        used, chosen = int(lengths[rows.stop - 1]), order[rows]
        outputs.append(encode(ids[chosen, :used], mask[chosen, :used]))
    return torch.cat(outputs)[order.argsort()]
