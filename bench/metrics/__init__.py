"""Exact retrieval metrics (R@K, mAP, mINP) in both directions, without sorting the gallery.

- ``results``: what an evaluation returns (``DirectionResult``, ``RetrievalResult``, ``cmc_curve``);
- ``ranking``: the public functions of one process (``evaluate_scores``, ``evaluate_direction``,
  ``evaluate_embeddings``) and one direction ranked from score blocks;
- ``kernel``: the exact rank count, pure tensor code;
- ``sharded``: the path where processes hold shards (fixed score tiles, both directions from one
  pass of score blocks), the module whose functions take a ``World``;
- ``checks``: inputs validated before ranking; ``tuning``: the constants, each with its reason;
- ``definition``: the plain argsort definition the kernel is tested against.
"""

from tbps_bench.metrics.checks import unit_rows
from tbps_bench.metrics.ranking import evaluate_direction, evaluate_embeddings, evaluate_scores
from tbps_bench.metrics.results import (
    BOOTSTRAP_SAMPLES,
    DEFAULT_KS,
    TIE_POLICY,
    DirectionResult,
    RetrievalResult,
    cmc_curve,
    recall_at_1_interval,
)
from tbps_bench.metrics.sharded import (
    ScoreFunction,
    Shard,
    cosine_scorer,
    evaluate_scored_once,
    evaluate_sharded,
    query_chunk_rows,
    rank_sharded,
)
from tbps_bench.metrics.tuning import DEFAULT_CHUNK_BYTES, SCORE_TILE

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_KS",
    "SCORE_TILE",
    "TIE_POLICY",
    "DirectionResult",
    "RetrievalResult",
    "ScoreFunction",
    "Shard",
    "cmc_curve",
    "cosine_scorer",
    "evaluate_direction",
    "evaluate_embeddings",
    "evaluate_scored_once",
    "evaluate_scores",
    "evaluate_sharded",
    "query_chunk_rows",
    "rank_sharded",
    "recall_at_1_interval",
    "unit_rows",
]
