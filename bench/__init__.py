"""tbps-bench: exact, reproducible evaluation for text-based person search."""

from tbps_bench.errors import BenchError
from tbps_bench.metrics import (
    DirectionResult,
    RetrievalResult,
    evaluate_embeddings,
    evaluate_scores,
)


def _version() -> str:
    """The installed distribution's version (one literal, in pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tbps-bench")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "BenchError",
    "DirectionResult",
    "RetrievalResult",
    "evaluate_embeddings",
    "evaluate_scores",
    "__version__",
]
