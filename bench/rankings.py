"""Per-query rankings: each query's top-K gallery items and their scores, in both directions.

Collected from the score blocks the metrics kernel already computes (nothing is scored twice), in
the order every ranking of tbps-bench uses: descending score, ties by gallery index. A block
updates the running top-K of its queries; under torchrun each process keeps the top-K of the
gallery shard or the queries it scores, and the first process merges them, so the file is the one
process's file for any world size. Written beside the result file as ``.npz`` (no pickled objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tbps_bench.distributed import SINGLE, World
from tbps_bench.errors import BenchError
from tbps_bench.splits import EvalSplit

#: index of an empty slot (a gallery smaller than K)
NO_ITEM = -1
DIRECTIONS = ("t2i", "i2t")


def _ordered(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's first ``k`` (value, index) pairs by descending value, ties by ascending index
    (empty slots, index ``NO_ITEM`` with value -inf, last)."""
    key = torch.where(indices < 0, torch.full_like(indices, torch.iinfo(torch.int64).max), indices)
    by_index = torch.sort(key, dim=1, stable=True).indices
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, by_value), indices.gather(1, by_value)


def block_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top ``k`` of a (rows x items) block: values and item indices, exact in tie order.

    ``torch.topk`` picks any of several items tied at the k-th value; rows where more items reach
    that value than fit are sorted in full (stably), so the kept items are those of lowest index."""
    k = min(k, scores.shape[1])
    if k == 0:
        empty = torch.empty(scores.shape[0], 0)
        return empty, empty.long()
    values, indices = torch.topk(scores, k, dim=1)
    crowded = ((scores >= values[:, -1:]).sum(1) > k).nonzero().view(-1)
    if crowded.numel():
        order = torch.sort(scores[crowded], dim=1, descending=True, stable=True).indices[:, :k]
        values[crowded], indices[crowded] = scores[crowded].gather(1, order), order
    return _ordered(values, indices, k)


class TopK:
    """The running top-K gallery items of ``queries`` queries (global indices on both sides)."""

    def __init__(self, k: int, queries: int):
        self.k = k
        self.values = torch.full((queries, k), float("-inf"), dtype=torch.float64)
        self.indices = torch.full((queries, k), NO_ITEM, dtype=torch.int64)

    def add(self, queries: slice, scores: torch.Tensor, gallery_start: int = 0) -> None:
        """A block of queries ``queries`` (global rows) x gallery items from ``gallery_start`` on.
        The top K is taken where the block is, in its own precision; only the K kept widen (exactly)."""
        values, indices = block_top_k(scores.detach(), self.k)
        self._merge(queries, values.to("cpu", torch.float64), indices.cpu() + gallery_start)

    def add_columns(self, gallery: slice, scores: torch.Tensor, query_start: int) -> None:
        """A block read by columns: the queries are its columns (global ``query_start`` on), the
        gallery items its rows ``gallery``."""
        self.add(slice(query_start, query_start + scores.shape[1]), scores.T, gallery.start)

    def _merge(self, queries: slice, values: torch.Tensor, indices: torch.Tensor) -> None:
        """Fold candidates into the queries' top-K; an item offered twice (processes that each rank
        the whole gallery) counts once."""
        both_values = torch.cat([self.values[queries], values], dim=1)
        both_indices = torch.cat([self.indices[queries], indices], dim=1)
        both_values, both_indices = _ordered(both_values, both_indices, both_values.shape[1])
        repeated = torch.zeros_like(both_indices, dtype=torch.bool)
        repeated[:, 1:] = (both_indices[:, 1:] == both_indices[:, :-1]) & (both_indices[:, 1:] != NO_ITEM)
        both_values = both_values.masked_fill(repeated, float("-inf"))
        both_indices = both_indices.masked_fill(repeated, NO_ITEM)
        self.values[queries], self.indices[queries] = _ordered(both_values, both_indices, self.k)

    def merged(self, world: World = SINGLE) -> TopK:
        """The top-K over every process's part (every process returns the same)."""
        if not world.distributed:
            return self
        parts = world.all_gather_object((self.values, self.indices))
        out = TopK(self.k, len(self.values))
        for values, indices in parts:
            out._merge(slice(0, len(values)), values, indices)
        return out


def collectors(rankings: Rankings | None) -> tuple[TopK | None, TopK | None]:
    """The t2i and i2t collectors of ``rankings``, or two Nones when rankings are not kept."""
    return (rankings.t2i, rankings.i2t) if rankings is not None else (None, None)


@dataclass
class Rankings:
    """The collectors of both directions."""

    k: int
    t2i: TopK
    i2t: TopK

    @classmethod
    def of(cls, k: int, texts: int, images: int) -> Rankings:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BenchError(f"--save-rankings must be an integer >= 1; got {k!r}")
        return cls(k, TopK(k, texts), TopK(k, images))

    def merged(self, world: World = SINGLE) -> Rankings:
        return Rankings(self.k, self.t2i.merged(world), self.i2t.merged(world))

    def arrays(self) -> dict[str, np.ndarray]:
        """``{t2i,i2t}_{index,score}``: queries x K, index ``NO_ITEM`` in an empty slot."""
        out = {}
        for direction in DIRECTIONS:
            collector: TopK = getattr(self, direction)
            out[f"{direction}_index"] = collector.indices.numpy().astype(np.int64)
            out[f"{direction}_score"] = collector.values.numpy().astype(np.float64)
        return out


def ranked_items(split: EvalSplit) -> dict[str, np.ndarray]:
    """What a rankings file's indices refer to: ids, image files, captions, the image folder."""
    return {
        "caption_ids": split.caption_pids.numpy().astype(np.int64),
        "image_ids": split.image_pids.numpy().astype(np.int64),
        "image_files": np.array(split.image_paths, dtype=str),
        "captions": np.array(split.captions, dtype=str),
        "image_root": np.array(str(Path(split.image_root).resolve())),
    }


def rankings_path(result_path: Path) -> Path:
    return result_path.with_name(result_path.stem + ".rankings.npz")


def write_rankings(path: Path, rankings: Rankings, items: dict[str, np.ndarray]) -> None:
    """``{t2i,i2t}_{index,score}`` (queries x K; index -1 where the gallery is smaller than K) and
    the items they refer to (``items``: ids, file names, captions), atomically."""
    from tbps_bench.fileio import atomic_path

    arrays = {**items, **rankings.arrays()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_rankings(path: Path) -> dict[str, np.ndarray]:
    """A rankings file, checked: the arrays a report reads, with consistent shapes."""
    from tbps_bench.fileio import read_npz

    data = read_npz(path)
    needed = [f"{d}_{part}" for d in DIRECTIONS for part in ("index", "score")]
    needed += ["image_ids", "caption_ids", "image_files", "captions"]
    missing = [key for key in needed if key not in data]
    if missing:
        raise BenchError(f"{path}: missing array(s) {', '.join(missing)}; not a rankings file of this version")
    counts = {
        "t2i": (len(data["captions"]), len(data["image_files"])),
        "i2t": (len(data["image_files"]), len(data["captions"])),
    }
    for direction, (queries, gallery) in counts.items():
        index = data[f"{direction}_index"]
        if index.ndim != 2 or index.shape[0] != queries or data[f"{direction}_score"].shape != index.shape:
            raise BenchError(f"{path}: '{direction}_index' is {index.shape}; expected ({queries}, K) with its scores")
        if index.size and (int(index.max()) >= gallery or int(index.min()) < NO_ITEM):
            raise BenchError(f"{path}: '{direction}_index' refers to items outside the gallery of {gallery}")
    return data
