"""tbps-bench: exact, reproducible evaluation for text-based person search."""

from tbps_bench.errors import BenchError
from tbps_bench.metrics import (
    DirectionResult,
    RetrievalResult,
    evaluate_embeddings,
    evaluate_scores,
)

__version__ = "0.1.0"

__all__ = [
    "BenchError",
    "DirectionResult",
    "RetrievalResult",
    "evaluate_embeddings",
    "evaluate_scores",
    "__version__",
]
