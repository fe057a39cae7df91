"""What every method of released weights checks first: a ``--checkpoint`` is given, and the
``trained_on`` label names a registered dataset (it decides the in-domain or cross-domain table)."""

from __future__ import annotations

from tbps_bench.errors import BenchError
from tbps_bench.methods import Method


def require_checkpoint(method: Method, trained_on: str | None, expected: str) -> None:
    """One line for a missing ``--checkpoint`` (``expected``: what file it should be) or an unknown
    ``trained_on`` (with did-you-mean); sets ``method.trained_on``."""
    if method.checkpoint is None:
        raise BenchError(f"{method.name} needs --checkpoint FILE: {expected}")
    if trained_on is not None:
        from tbps_bench.registry import DATASETS

        DATASETS.entry(trained_on)
    method.trained_on = trained_on
