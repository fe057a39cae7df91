"""RDE's token selection embedding (TSE): the most attended tokens of the last block, max-pooled.

Per item, the last block's attention (averaged over heads) from the class token (images) or the end
token (texts) ranks the tokens; the start, class and end tokens are never chosen, and for texts
padding ranks below every word. The top ``k`` tokens' projected features are L2-normalised, mapped
by ``direct(f) + out(relu(norm(hidden(f))))`` and max-pooled (texts: over their first
``min(words, k)`` selected tokens, which are always words).
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-8


class SelectionHead(nn.Module):
    """``direct`` plus a two-layer MLP with batch norm after the first layer only (as RDE applies it)."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.direct = nn.Linear(width, out)
        self.hidden = nn.Linear(width, out // 2)
        self.norm = nn.BatchNorm1d(out // 2)
        self.out = nn.Linear(out // 2, out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, count, width = features.shape
        flat = features.reshape(batch * count, width)
        mapped = self.direct(flat) + self.out(torch.relu(self.norm(self.hidden(flat))))
        return mapped.view(batch, count, -1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + EPS)


def _gather(tokens: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, chosen[..., None].expand(-1, -1, tokens.shape[2]))


def image_selection(head: SelectionHead, tokens: torch.Tensor, attention: torch.Tensor, ratio: float) -> torch.Tensor:
    k = int((attention.shape[1] - 1) * ratio)
    scores = attention[:, 0].clone()
    scores[:, 0] = -1.0  # never the class token
    mapped = head(_unit(_gather(tokens, scores.topk(k, dim=-1).indices)))
    return mapped.max(dim=1).values


def text_selection(
    head: SelectionHead, tokens: torch.Tensor, attention: torch.Tensor, ids: torch.Tensor, ratio: float
) -> torch.Tensor:
    k = int((attention.shape[1] - 2) * ratio)
    rows = torch.arange(len(ids), device=ids.device)
    end = ids.argmax(dim=-1)
    scores = attention[rows, end].clone()
    scores[rows, end] = -1.0  # never the end token
    scores[:, 0] = -1.0  # nor the start token
    scores = scores * (ids != 0)  # padding ranks below every word
    mapped = head(_unit(_gather(tokens, scores.topk(k, dim=-1).indices)))
    words = ((ids != 0).sum(dim=1) - 2).clamp(min=1, max=k)
    keep = torch.arange(k, device=ids.device)[None, :] < words[:, None]
    return mapped.masked_fill(~keep[..., None], float("-inf")).max(dim=1).values
