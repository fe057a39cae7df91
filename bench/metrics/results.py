"""What an evaluation returns: per-query outcomes of each direction and the metrics they give
(R@K, mAP, mINP), the CMC curve and the bootstrap interval of R@1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
TIE_POLICY = "stable-by-gallery-index"


#: resamples of the bootstrap interval of R@1, and its seed (fixed: the same interval on every build)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 20210108


def recall_at_1_interval(first_hit_ranks: Sequence[Sequence[int]]) -> tuple[float, float]:
    """95 % bootstrap interval of R@1 (percent) from the first-hit ranks of one or more runs of the
    same queries, resampling queries (jointly across runs)."""
    hits = torch.stack([torch.tensor(ranks) == 1 for ranks in first_hit_ranks]).double()  # runs x queries
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    samples = torch.randint(0, hits.shape[1], (BOOTSTRAP_SAMPLES, hits.shape[1]), generator=generator)
    estimates = hits.mean(0)[samples].mean(1) * 100.0
    low, high = torch.quantile(estimates, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high


def cmc_curve(first_hit_rank: torch.Tensor, max_rank: int = 20) -> list[float]:
    """R@1..R@max_rank (percent) from first-hit ranks: the CMC curve."""
    return [100.0 * float((first_hit_rank <= k).double().mean()) for k in range(1, max_rank + 1)]


@dataclass
class DirectionResult:
    """Per-query outcome of one retrieval direction, from which every metric is derived."""

    first_hit_rank: torch.Tensor  # (Q,) int64, 1-based rank of the best-ranked positive
    average_precision: torch.Tensor  # (Q,) float64 in [0, 1]
    inverse_negative_penalty: torch.Tensor  # (Q,) float64 in [0, 1]
    num_positives: torch.Tensor  # (Q,) int64
    ks: tuple[int, ...] = DEFAULT_KS
    skipped_queries: int = 0

    def summary(self) -> dict[str, float]:
        """R@K, mAP and mINP in percent, as published tables report them."""
        out = {f"R{k}": 100.0 * float((self.first_hit_rank <= k).double().mean()) for k in self.ks}
        out["mAP"] = 100.0 * float(self.average_precision.mean())
        out["mINP"] = 100.0 * float(self.inverse_negative_penalty.mean())
        return out

    def cmc(self, max_rank: int = 20) -> list[float]:
        return cmc_curve(self.first_hit_rank, max_rank)


@dataclass
class RetrievalResult:
    t2i: DirectionResult
    i2t: DirectionResult
    tie_policy: str = TIE_POLICY

    def summary(self) -> dict[str, dict[str, float]]:
        return {"t2i": self.t2i.summary(), "i2t": self.i2t.summary()}
