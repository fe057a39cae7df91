"""The exact rank-counting kernel: pure tensor code that knows nothing of processes.

With ties broken by gallery index, the gallery order is the total order on (-score, gallery index),
so a positive's rank is one plus the number of gallery items before it in that order: a count, not a
sort, exact for ties and identical on every device and chunk size. ``count_preceding`` picks one of
three strategies (compare the few candidates, a histogram over score bins, or each positive against
every item), all plain tensor operations on ``tuning.COUNT_ELEMENTS`` scores at a time. The
definition it is tested against is ``definition.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tbps_bench.metrics import tuning


@dataclass
class PositiveTable:
    """For each query, the gallery indices of its positives (padded with -1), sorted by index."""

    index: torch.Tensor  # (Q, Pmax) int64
    count: torch.Tensor  # (Q,) int64


def positive_table(query_ids: torch.Tensor, gallery_ids: torch.Tensor) -> PositiveTable:
    order = torch.argsort(gallery_ids, stable=True)
    sorted_ids = gallery_ids[order]
    unique_ids, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(unique_ids, query_ids).clamp(max=max(len(unique_ids) - 1, 0))
    found = unique_ids[slot] == query_ids
    count = torch.where(found, counts[slot], torch.zeros_like(slot))
    pmax = int(count.max()) if count.numel() else 0
    offsets = torch.arange(max(pmax, 1))
    flat = (starts[slot][:, None] + offsets[None, :]).clamp(max=len(order) - 1)
    index = torch.where(offsets[None, :] < count[:, None], order[flat], torch.full_like(flat, -1))
    return PositiveTable(index=index, count=count)


def count_candidates(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, candidate: torch.Tensor
) -> torch.Tensor:
    """Compare only the candidate items with each positive, in steps whose (candidate, positive)
    pairs fit ``tuning.CANDIDATE_BUDGET``."""
    positives = thresholds.shape[1]
    rows, columns = candidate.nonzero(as_tuple=True)  # row-major: each step is whole pairs, any rows
    counts = torch.zeros(thresholds.shape, dtype=torch.int32, device=scores.device)
    per_step = max(tuning.CANDIDATE_BUDGET // positives, 1)
    for start in range(0, rows.numel(), per_step):
        row, column = rows[start : start + per_step], columns[start : start + per_step]
        item = scores[row, column][:, None]
        threshold, position = thresholds[row], index[row]
        ahead = (item > threshold) | ((item == threshold) & (column[:, None] < position))
        counts.index_add_(0, row, ahead.to(torch.int32))
    return counts


def _count_sharing_a_bin(
    scores: torch.Tensor,
    thresholds: torch.Tensor,
    index: torch.Tensor,
    item_bins: torch.Tensor,
    positive_bins: torch.Tensor,
    valid: torch.Tensor,
    bins: int,
    workspace: Workspace,
) -> torch.Tensor:
    """Of the items in each positive's own bin, those ahead of it (tie rule included). Each such item
    is compared with the positives of its bin only, one layer at a time: layer 0 holds one positive
    of every bin that has any, layer 1 a second one where a bin has two, and so on (a few layers)."""
    rows, positives = thresholds.shape
    device = scores.device
    unused = bins + 2  # a bin no item falls in: where padding positives (not ``valid``) go
    positive_bins = torch.where(valid, positive_bins, torch.full_like(positive_bins, unused))
    sorted_bins, order = positive_bins.sort(dim=1, stable=True)
    slots = torch.arange(positives, device=device).expand(rows, positives)
    layer = torch.empty_like(order).scatter_(1, order, slots - torch.searchsorted(sorted_bins, sorted_bins))
    slot_of_bin = workspace.get("slot_of_bin", torch.Size((rows, bins + 3)), torch.int64, device)

    def layer_table(depth: int) -> torch.Tensor:
        slot_of_bin.fill_(-1).scatter_(1, torch.where(layer == depth, positive_bins, unused), slots)
        return slot_of_bin

    marked = layer_table(0)[:, : bins + 2] >= 0
    shared = torch.gather(marked, 1, item_bins, out=workspace.get("shared", scores.shape, torch.bool, device))
    flat = shared.view(-1).nonzero().view(-1)
    row = torch.div(flat, scores.shape[1], rounding_mode="floor")
    column = flat - row * scores.shape[1]
    item, item_bin = scores.reshape(-1)[flat], item_bins.view(-1)[flat]
    counts = torch.zeros(rows * positives, dtype=torch.int32, device=device)
    for depth in range(int(torch.where(valid, layer, 0).max()) + 1 if rows else 0):
        slot = layer_table(depth)[row, item_bin] if depth else slot_of_bin[row, item_bin]
        if depth:  # only the items whose bin has a positive at this depth
            present = (slot >= 0).nonzero().view(-1)
            row, column, item, item_bin, slot = (t[present] for t in (row, column, item, item_bin, slot))
        threshold, position = thresholds[row, slot], index[row, slot]
        ahead = (item > threshold) | ((item == threshold) & (column < position))
        counts.index_add_(0, row * positives + slot, ahead.to(torch.int32))
    return counts.view(rows, positives)


def _score_bins(
    values: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bins: int, out: torch.Tensor
) -> torch.Tensor:
    """Bin of each score, ``score * scale + offset`` clamped to 0 .. bins + 1, two correctly rounded
    IEEE operations, each monotone, so a higher bin always means a score at least as high and a
    lower bin a score at most as high: all the count needs, as scores and positives go through the
    same steps. ``out``: a float buffer of ``values``' shape."""
    torch.mul(values, scale, out=out).add_(offset).clamp_(0, bins + 1)
    return out  # non-negative after the clamp, so the conversion's truncation is the floor


class Workspace:
    """Buffers that every row group of every score block reuses. On a CPU a fresh tensor of a few
    MB costs the page faults of new memory, more than the arithmetic done in it; reused buffers of
    ``tuning.COUNT_ELEMENTS`` scores also stay in the processor's caches between the passes of the kernel."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size].view(shape)


def count_binned(
    scores: torch.Tensor,
    thresholds: torch.Tensor,
    index: torch.Tensor,
    workspace: Workspace | None = None,
    bins: int = tuning.SCORE_BINS,
) -> torch.Tensor:
    """The count when many items score above the lowest positive, in a few plain passes.

    Each row's scores are binned between its lowest and highest positive. Items in a higher bin than
    a positive's are ahead of it: a cumulative histogram counts them. Only the items sharing a bin
    with some positive (a few per positive) are compared exactly, with the tie rule."""
    workspace = workspace or Workspace()
    device = scores.device
    rows, width = scores.shape
    valid = torch.isfinite(thresholds)  # padding positives are +inf
    low = torch.where(valid, thresholds, torch.full_like(thresholds, float("inf"))).amin(1, keepdim=True)
    high = torch.where(valid, thresholds, torch.full_like(thresholds, float("-inf"))).amax(1, keepdim=True)
    scale = (bins - 1) / (high - low).clamp_min(1e-30)
    offset = 1 - low * scale  # the lowest positive near bin 1, the highest near bin ``bins``
    item_bins = workspace.get("bins", scores.shape, torch.int64, device)
    values = workspace.get("values", scores.shape, scores.dtype, device)
    item_bins.copy_(_score_bins(scores, scale, offset, bins, values))
    positive_bins = _score_bins(thresholds, scale, offset, bins, torch.empty_like(thresholds)).to(torch.int64)
    positive_bins = torch.where(valid, positive_bins, torch.zeros_like(index))
    histogram = workspace.get("histogram", torch.Size((rows, bins + 2)), torch.int32, device).zero_()
    histogram.scatter_add_(1, item_bins, torch.ones(1, dtype=torch.int32, device=device).expand_as(item_bins))
    # items in a higher bin than the positive's: all of them, less those in its bin or below
    counts = width - histogram.cumsum_(1).gather(1, positive_bins)
    shared = _count_sharing_a_bin(scores, thresholds, index, item_bins, positive_bins, valid, bins, workspace)
    return counts + shared


def count_compared(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, workspace: Workspace | None = None
) -> torch.Tensor:
    """The count for a few positives per row: each positive's threshold compared with every item, in
    two plain passes (items above it, items equal to it) that sum in floating point, the fastest
    reduction a CPU has (exact: a row holds fewer than 2^24 items, or the sums run in float64). A
    row where an item other than the positive itself equals a threshold (an exact tie) is counted
    again by ``count_candidates``, which applies the tie rule."""
    workspace = workspace or Workspace()
    exact = torch.float32 if scores.shape[1] < 2**24 else torch.float64
    flags = workspace.get("flags", scores.shape, exact, scores.device)
    above = torch.empty(thresholds.shape, dtype=exact, device=scores.device)
    equal = torch.empty_like(above)
    for k in range(thresholds.shape[1]):
        threshold = thresholds[:, k : k + 1]
        above[:, k] = torch.gt(scores, threshold, out=flags).sum(1)
        equal[:, k] = torch.eq(scores, threshold, out=flags).sum(1)
    counts = above.to(torch.int32)
    itself = (index >= 0) & (index < scores.shape[1]) & torch.isfinite(thresholds)
    tied = (equal > itself.to(exact)).any(1).nonzero().view(-1)
    if tied.numel():
        block, row_thresholds = scores[tied], thresholds[tied]
        candidate = block >= row_thresholds.amin(dim=1, keepdim=True)
        counts[tied] = count_candidates(block, row_thresholds, index[tied], candidate)
    return counts


def count_preceding(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, workspace: Workspace | None = None
) -> torch.Tensor:
    """For each (row, k): how many gallery items precede the item ``index[row, k]`` whose score is
    ``thresholds[row, k]``, in the order (descending score, ascending gallery index).

    Only an item scoring at least a row's lowest positive can precede any of its positives; for a
    useful model those are few (about the rank of the last positive), and comparing just them is the
    fastest exact count. When they are many (positives ranked deep), a histogram over score bins
    counts all but the items sharing a bin with a positive. A query with at most
    ``tuning.COMPARED_POSITIVES`` positives compares them with every item instead. All are plain tensor
    operations, run on ``tuning.COUNT_ELEMENTS`` scores at a time: the same code and speed wherever PyTorch runs,
    nothing to compile."""
    workspace = workspace or Workspace()
    counts = torch.empty(thresholds.shape, dtype=torch.int32, device=scores.device)
    group = max(1, tuning.COUNT_ELEMENTS // max(scores.shape[1], 1))
    for start in range(0, scores.shape[0], group):
        rows = slice(start, start + group)
        block, row_thresholds, row_index = scores[rows], thresholds[rows], index[rows]
        if row_thresholds.shape[1] <= tuning.COMPARED_POSITIVES:
            counts[rows] = count_compared(block, row_thresholds, row_index, workspace)
            continue
        low = row_thresholds.amin(dim=1, keepdim=True)
        # how many items are candidates, estimated from every tuning.DECISION_STRIDE-th row: a decision only
        sample = block[:: tuning.DECISION_STRIDE]
        sample_low = low[:: tuning.DECISION_STRIDE]
        above = torch.ge(sample, sample_low, out=workspace.get("above", sample.shape, torch.float32, block.device))
        if float(above.sum()) * row_thresholds.shape[1] <= sample.numel():
            counts[rows] = count_candidates(block, row_thresholds, row_index, block >= low)
        else:
            bins = min(tuning.SCORE_BINS, max(1, block.shape[1] // tuning.ITEMS_PER_BIN))
            counts[rows] = count_binned(block, row_thresholds, row_index, workspace, bins)
    return counts


def per_query(ranks: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-hit rank, average precision and inverse negative penalty of each query, from the ranks
    of its positives (ascending, padded with 0) and how many it has."""
    ranks = ranks.cpu().to(torch.float64)
    n = count.to(torch.float64)
    position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)[None, :]
    precision = torch.where(ranks > 0, position / ranks.clamp(min=1), torch.zeros_like(ranks))
    last = ranks.gather(1, (count.to(torch.int64) - 1)[:, None]).squeeze(1)
    return ranks[:, 0].to(torch.int64), precision.sum(1) / n, n / last


def ascending_ranks(counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based ranks from the counts of items ahead of each positive: ascending, padded with 0."""
    padding = torch.iinfo(torch.int64).max
    ranks = torch.where(valid, counts.to(torch.int64) + 1, torch.full(counts.shape, padding, device=counts.device))
    ranks = torch.sort(ranks, dim=1).values
    return torch.where(ranks == padding, torch.zeros_like(ranks), ranks)
