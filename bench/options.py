"""The closed choices of the command line and the Python API, as types: each option's values are an
enum (a ``str`` subclass, so results, cache keys and comparisons read them as the plain strings)."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from tbps_bench.errors import BenchError


class Amp(StrEnum):
    """``--amp``: autocast precision of encoding and training."""

    NONE = "none"
    BF16 = "bf16"
    FP16 = "fp16"


class FeatureStorage(StrEnum):
    """``--feature-dtype``: the precision features are kept in between encoding and scoring."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class SelectOn(StrEnum):
    """``--select-on``: the split that picks the best epoch (``last``: the final epoch)."""

    VAL = "val"
    TEST = "test"
    LAST = "last"


class Scoring(StrEnum):
    """How an evaluation scored its pairs (recorded in ``protocol.scoring``)."""

    COSINE = "cosine"
    PAIRWISE = "pairwise"
    SHORTLIST = "shortlist"


Choice = TypeVar("Choice", bound=StrEnum)


def _choices(kind: type[StrEnum]) -> str:
    return ", ".join(member.value for member in kind)


def parsed(kind: type[Choice], value: object, option: str) -> Choice:
    """``value`` as ``kind``, or one line naming the option and its choices."""
    try:
        return kind(value)
    except ValueError:
        raise BenchError(f"{option} must be one of {_choices(kind)}; got {value!r}") from None


def argument(kind: type[Choice]):
    """An argparse ``type`` for ``kind``: the enum member, or argparse's one-line usage error with
    the choices."""
    import argparse

    def convert(value: str) -> Choice:
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {_choices(kind)})") from None

    convert.__name__ = kind.__name__
    return convert
