"""The dataset-adapter interface: what ``eval``, ``train``, ``data check`` and ``data info`` rely on.

A dataset plugin is a factory ``(root=...) -> adapter``; the PEDES-schema adapter
(``tbps_datasets.pedes.PedesDataset``) serves every built-in spec file. An adapter of another schema
provides the same members, and one that does not is named in one line before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tbps_bench.errors import BenchError
from tbps_bench.splits import EvalSplit


@runtime_checkable
class DatasetAdapter(Protocol):
    spec: Any  #: the dataset's metadata (``tbps_datasets.specs.DatasetSpec``): name, title, counts
    root: Path  #: the located dataset folder
    image_root: Path

    def records(self) -> list[Any]:
        """Every annotation record (split, person id, file path, captions), for ``data check``."""
        ...

    def eval_split(self, split: str = "test") -> EvalSplit:
        """One split as the harness reads it: unique images, their captions, ids."""
        ...

    def split_statistics(self) -> dict[str, dict[str, float]]:
        """Per split: ids, images, captions, caption length (words) mean / min / max."""
        ...

    # optional: ``check(quick: bool, workers: int)`` -> a report with ``ok``, ``lines()`` and
    # ``as_dict()``, for ``data check`` (an adapter without it is named by that command)
    # optional: ``subsets(split: EvalSplit)`` -> the parts of a split that are reported on their own
    # besides the whole (UFine3C's per-source galleries), each with its own ``split`` name


MEMBERS = ("spec", "root", "image_root", "records", "eval_split", "split_statistics")


def load_dataset(name: str, root: str | Path | None) -> DatasetAdapter:
    """The registered dataset ``name`` located at ``root``, checked against the adapter interface."""
    from tbps_bench.registry import DATASETS

    adapter = DATASETS.load(name)(root=root)
    if not isinstance(adapter, DatasetAdapter):
        lacking = [m for m in MEMBERS if not hasattr(adapter, m)]
        raise BenchError(
            f"dataset '{name}' built a {type(adapter).__name__} that lacks {', '.join(lacking)}; a dataset adapter "
            f"provides {', '.join(MEMBERS)} (tbps_bench.adapters.DatasetAdapter)"
        )
    return adapter


def evaluation_parts(adapter: DatasetAdapter, split: EvalSplit) -> list[EvalSplit]:
    """The evaluated parts of ``split``: the split itself, then the subsets its adapter reports."""
    subsets = getattr(adapter, "subsets", None)
    return [split, *(subsets(split) if subsets is not None else [])]
