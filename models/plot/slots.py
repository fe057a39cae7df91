"""PLOT's part slots: slot attention with learnable initial slots (Locatello et al. 2020, with the
slots learned rather than sampled), as PLOT runs it at test time.

Each iteration attends from the slots to the inputs with the softmax taken over the *slots* (slots
compete for each input), gives masked inputs weight 0, renormalises each slot's weights over the
inputs (+1e-8), and updates the slots with a GRU cell and a residual MLP. The slots after the last
iteration are the part features. Parameter names follow the released files, so a file's entries load
as stored.
"""

from __future__ import annotations

import torch
from torch import nn

#: added to each slot's total attention before it divides (the authors' epsilon)
EPS = 1e-8
#: the residual MLP is at least this wide
MIN_HIDDEN = 128


class SlotAttention(nn.Module):
    def __init__(self, width: int, iterations: int):
        super().__init__()
        self.iterations = iterations
        self.scale = width**-0.5
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.gru = nn.GRUCell(width, width)
        hidden = max(width, MIN_HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
        self.norm_input = nn.LayerNorm(width)
        self.norm_slots = nn.LayerNorm(width)
        self.norm_pre_ff = nn.LayerNorm(width)

    def forward(self, slots: torch.Tensor, inputs: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """``slots`` (S x D, shared by the batch), ``inputs`` (B x N x D), ``padding`` (B x N, True
        where an input is padding) -> B x S x D."""
        batch, _, width = inputs.shape
        inputs = self.norm_input(inputs)
        keys, values = self.to_k(inputs), self.to_v(inputs)
        slots = slots.expand(batch, -1, -1)
        for _ in range(self.iterations):
            previous = slots
            queries = self.to_q(self.norm_slots(slots))
            weights = (queries @ keys.transpose(1, 2) * self.scale).softmax(dim=1)  # over the slots
            if padding is not None:
                weights = weights * (~padding)[:, None, :]
            weights = weights / (weights.sum(dim=-1, keepdim=True) + EPS)
            updates = weights @ values
            slots = self.gru(updates.reshape(-1, width), previous.reshape(-1, width)).reshape(batch, -1, width)
            slots = slots + self.mlp(self.norm_pre_ff(slots))
        return slots
