"""``random``: seeded random embeddings, the chance-level sanity row of every leaderboard."""

from __future__ import annotations

from typing import Any

import torch

from tbps_bench.arguments import at_least
from tbps_bench.methods import Method


class RandomMethod(Method):
    """Each item's embedding depends only on (seed, modality, dataset index), not on batching."""

    name = "random"
    needs_pixels = False
    reads_checkpoint = False

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        at_least("dim", arguments.get("dim", 64), 1)
        at_least("seed", arguments.get("seed", 0), 0)

    def __init__(self, seed: int = 0, dim: int = 64, **kwargs: Any):
        super().__init__(**kwargs)
        self.seed, self.dim = int(seed), int(dim)

    def arguments(self) -> dict[str, Any]:
        return {"seed": self.seed, "dim": self.dim}

    def _embed(self, indices: torch.Tensor, modality: int) -> torch.Tensor:
        rows = []
        for index in indices.tolist():
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + modality * 7_919 + index)
            rows.append(torch.randn(self.dim, generator=generator))
        return torch.stack(rows).to(self.device)

    def encode_images(self, batch):
        return self._embed(batch["index"], 0)

    def encode_texts(self, batch):
        return self._embed(batch["index"], 1)
