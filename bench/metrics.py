"""Exact retrieval metrics (R@K, mAP, mINP) in both directions, without sorting the gallery.

Every metric of a query follows from the 1-based ranks of its positives. With ties broken by
gallery index, the gallery order is the total order on (-score, gallery index), so a positive's rank
is one plus the number of gallery items before it in that order: a count, not a sort, exact for
ties and identical on every device and chunk size (see ``_count_preceding``). The full Q x G matrix
is never held: queries are processed in chunks whose score block fits a memory budget, and a score
block serves both directions (``evaluate_sharded``, ``evaluate_scored_once``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tbps_bench.distributed import SINGLE, World
from tbps_bench.errors import BenchError, first_offending
from tbps_bench.features import PACKED_LENGTHS, feature_rows, is_packed
from tbps_bench.rankings import Rankings, TopK

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
TIE_POLICY = "stable-by-gallery-index"
DEFAULT_CHUNK_BYTES = 128 * 2**20


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


# --------------------------------------------------------------------------- validation


def unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float32. Each row is first multiplied by the power of two that
    brings its largest entry into [0.5, 1): exact, so an ordinary row gets the bits plain
    ``normalize`` gives it, while rows far below or above float32's comfortable range neither
    underflow nor overflow when squared (a cosine does not depend on a row's scale)."""
    if embeddings.dtype != torch.float64:  # float64 is scaled before it narrows
        embeddings = embeddings.float()
    if embeddings.numel() == 0:
        return embeddings.float()
    exponent = torch.frexp(embeddings.abs().amax(1, keepdim=True)).exponent
    return torch.nn.functional.normalize(torch.ldexp(embeddings, -exponent), dim=1).float()


def _ranked_dtype(scores: torch.Tensor) -> torch.Tensor:
    """Scores as the kernel compares them: float64 stays float64 (float32 would turn distinct
    scores into ties and huge values into infinities); narrower types widen to float32, exactly."""
    return scores if scores.dtype == torch.float64 else scores.to(torch.float32)


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.numel() == 0:
        raise BenchError(f"{name} is empty (shape {tuple(tensor.shape)}); expected at least one row")
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise BenchError(f"{name} contains NaN or inf: {first_offending(bad)} (shape {tuple(tensor.shape)})")


def _as_ids(name: str, ids, expected: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise BenchError(f"{name} must be one-dimensional, got shape {tuple(ids.shape)}")
    if ids.numel() != expected:
        raise BenchError(f"{name} has {ids.numel()} entries but there are {expected} {what}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise BenchError(f"{name} must hold integer person ids, got dtype {ids.dtype}")
    return ids.to(torch.int64)


# --------------------------------------------------------------------------- positives


@dataclass
class _PositiveTable:
    """For each query, the gallery indices of its positives (padded with -1), sorted by index."""

    index: torch.Tensor  # (Q, Pmax) int64
    count: torch.Tensor  # (Q,) int64


def _positive_table(query_ids: torch.Tensor, gallery_ids: torch.Tensor) -> _PositiveTable:
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
    return _PositiveTable(index=index, count=count)


# --------------------------------------------------------------------------- kernel


#: (candidate item, positive) comparisons per step of the candidate kernel: bounds its extra memory
#: (about 17 bytes each: the gathered threshold, gallery index, comparison and count)
CANDIDATE_BUDGET = 1 << 22
#: histogram bins between a row's lowest and highest positive score (the binned count), at most,
#: and at least this many items a bin (short rows: a histogram wider than the row costs more than it saves)
SCORE_BINS = 1024
ITEMS_PER_BIN = 4


def _count_candidates(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, candidate: torch.Tensor
) -> torch.Tensor:
    """Compare only the candidate items with each positive, in steps whose (candidate, positive)
    pairs fit ``CANDIDATE_BUDGET``."""
    positives = thresholds.shape[1]
    rows, columns = candidate.nonzero(as_tuple=True)  # row-major: each step is whole pairs, any rows
    counts = torch.zeros(thresholds.shape, dtype=torch.int32, device=scores.device)
    per_step = max(CANDIDATE_BUDGET // positives, 1)
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
    workspace: _Workspace,
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


class _Workspace:
    """Buffers that every row group of every score block reuses. On a CPU a fresh tensor of a few
    MB costs the page faults of new memory, more than the arithmetic done in it; reused buffers of
    ``COUNT_ELEMENTS`` scores also stay in the processor's caches between the passes of the kernel."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buffer[:size].view(shape)


def _count_binned(
    scores: torch.Tensor,
    thresholds: torch.Tensor,
    index: torch.Tensor,
    workspace: _Workspace | None = None,
    bins: int = SCORE_BINS,
) -> torch.Tensor:
    """The count when many items score above the lowest positive, in a few plain passes.

    Each row's scores are binned between its lowest and highest positive. Items in a higher bin than
    a positive's are ahead of it: a cumulative histogram counts them. Only the items sharing a bin
    with some positive (a few per positive) are compared exactly, with the tie rule."""
    workspace = workspace or _Workspace()
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


def _count_compared(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, workspace: _Workspace | None = None
) -> torch.Tensor:
    """The count for a few positives per row: each positive's threshold compared with every item, in
    two plain passes (items above it, items equal to it) that sum in floating point, the fastest
    reduction a CPU has (exact: a row holds fewer than 2^24 items, or the sums run in float64). A
    row where an item other than the positive itself equals a threshold (an exact tie) is counted
    again by ``_count_candidates``, which applies the tie rule."""
    workspace = workspace or _Workspace()
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
        counts[tied] = _count_candidates(block, row_thresholds, index[tied], candidate)
    return counts


#: scores counted together (whole rows, at least one): their working buffers (17 bytes a score) stay
#: in the processor's caches between the kernel's passes
COUNT_ELEMENTS = 1 << 21
#: up to this many positives per query, comparing each with every item beats the histogram
COMPARED_POSITIVES = 8
#: the choice between the candidate and the binned count looks at every this-many-th row
DECISION_STRIDE = 8


def _count_preceding(
    scores: torch.Tensor, thresholds: torch.Tensor, index: torch.Tensor, workspace: _Workspace | None = None
) -> torch.Tensor:
    """For each (row, k): how many gallery items precede the item ``index[row, k]`` whose score is
    ``thresholds[row, k]``, in the order (descending score, ascending gallery index).

    Only an item scoring at least a row's lowest positive can precede any of its positives; for a
    useful model those are few (about the rank of the last positive), and comparing just them is the
    fastest exact count. When they are many (positives ranked deep), a histogram over score bins
    counts all but the items sharing a bin with a positive. A query with at most
    ``COMPARED_POSITIVES`` positives compares them with every item instead. All are plain tensor
    operations, run on ``COUNT_ELEMENTS`` scores at a time: the same code and speed wherever PyTorch runs,
    nothing to compile."""
    workspace = workspace or _Workspace()
    counts = torch.empty(thresholds.shape, dtype=torch.int32, device=scores.device)
    group = max(1, COUNT_ELEMENTS // max(scores.shape[1], 1))
    for start in range(0, scores.shape[0], group):
        rows = slice(start, start + group)
        block, row_thresholds, row_index = scores[rows], thresholds[rows], index[rows]
        if row_thresholds.shape[1] <= COMPARED_POSITIVES:
            counts[rows] = _count_compared(block, row_thresholds, row_index, workspace)
            continue
        low = row_thresholds.amin(dim=1, keepdim=True)
        # how many items are candidates, estimated from every DECISION_STRIDE-th row: a decision only
        sample = block[::DECISION_STRIDE]
        sample_low = low[::DECISION_STRIDE]
        above = torch.ge(sample, sample_low, out=workspace.get("above", sample.shape, torch.float32, block.device))
        if float(above.sum()) * row_thresholds.shape[1] <= sample.numel():
            counts[rows] = _count_candidates(block, row_thresholds, row_index, block >= low)
        else:
            bins = min(SCORE_BINS, max(1, block.shape[1] // ITEMS_PER_BIN))
            counts[rows] = _count_binned(block, row_thresholds, row_index, workspace, bins)
    return counts


def _ranks_in_block(
    scores: torch.Tensor,
    positives: torch.Tensor,
    gallery_start: int = 0,
    world: World = SINGLE,
    workspace: _Workspace | None = None,
) -> torch.Tensor:
    """1-based ranks of each query's positives, ascending, padded with 0.

    scores: (c, g) block of this rank's gallery shard, which starts at global index
    ``gallery_start``; positives: (c, Pmax) global gallery indices padded with -1. Every row has at
    least one positive. A positive's score comes from the rank holding it (a max over ranks, where
    the others offer -inf); each rank counts the items of its own shard ahead of every positive, and
    the counts add up over ranks. Counts are integers, so any world size gives the same ranks.
    """
    valid = positives >= 0
    local = positives - gallery_start
    width = scores.shape[1]
    owned = valid & (local >= 0) & (local < width)
    if width:
        found = scores.gather(1, local.clamp(0, width - 1))
    else:
        found = torch.zeros(positives.shape, dtype=scores.dtype, device=scores.device)
    thresholds = world.all_reduce(torch.where(owned, found, torch.full_like(found, float("-inf"))), "max")
    thresholds = torch.where(valid, thresholds, torch.full_like(thresholds, float("inf")))
    if width:
        counts = _count_preceding(scores, thresholds, local, workspace)
    else:
        counts = torch.zeros(positives.shape, dtype=torch.int32, device=scores.device)
    return _ascending_ranks(world.all_reduce(counts, "sum"), valid)


def _per_query(ranks: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-hit rank, average precision and inverse negative penalty of each query, from the ranks
    of its positives (ascending, padded with 0) and how many it has."""
    ranks = ranks.cpu().to(torch.float64)
    n = count.to(torch.float64)
    position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)[None, :]
    precision = torch.where(ranks > 0, position / ranks.clamp(min=1), torch.zeros_like(ranks))
    last = ranks.gather(1, (count.to(torch.int64) - 1)[:, None]).squeeze(1)
    return ranks[:, 0].to(torch.int64), precision.sum(1) / n, n / last


def _ascending_ranks(counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based ranks from the counts of items ahead of each positive: ascending, padded with 0."""
    padding = torch.iinfo(torch.int64).max
    ranks = torch.where(valid, counts.to(torch.int64) + 1, torch.full(counts.shape, padding, device=counts.device))
    ranks = torch.sort(ranks, dim=1).values
    return torch.where(ranks == padding, torch.zeros_like(ranks), ranks)


def _queries_without_positives(table: _PositiveTable, skip: bool, direction: str) -> torch.Tensor:
    """The queries with no positive in the gallery: an error, unless the user asked to skip them."""
    missing = table.count == 0
    if bool(missing.any()) and not skip:
        raise BenchError(
            f"{direction}: {int(missing.sum())} queries have no positive in the gallery "
            f"(first at query index {int(torch.nonzero(missing)[0])}); the standard protocol has none "
            "(to drop and count them: tbps-bench score --skip-queries-without-positives, or "
            "skip_queries_without_positives=True in Python)"
        )
    return missing


def _direction(
    blocks: Iterator[tuple[slice, torch.Tensor]],
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    ks: Sequence[int],
    skip_queries_without_positives: bool,
    direction: str,
    gallery_start: int = 0,
    world: World = SINGLE,
    require_queries: bool = True,
    collector: TopK | None = None,
    query_offset: int = 0,
) -> DirectionResult:
    """Per-query results from score blocks: (query rows, scores of those queries against this
    rank's gallery shard, which starts at ``gallery_start``). Every rank sees every query chunk.
    ``require_queries=False``: no query with a positive gives an empty result, not an error."""
    table = _positive_table(query_ids, gallery_ids)
    missing = _queries_without_positives(table, skip_queries_without_positives, direction)
    first, ap, inp = [], [], []
    workspace = _Workspace()
    for rows, block in blocks:
        if collector is not None:  # each query's top-K items, from the block already scored
            collector.add(slice(rows.start + query_offset, rows.stop + query_offset), block, gallery_start)
        keep = ~missing[rows]
        positives = table.index[rows][keep].to(block.device)
        if positives.shape[0] == 0:
            continue
        block = block[keep.to(block.device)] if not bool(keep.all()) else block
        ranks = _ranks_in_block(block, positives, gallery_start, world, workspace)
        for values, out in zip(_per_query(ranks, table.count[rows][keep]), (first, ap, inp), strict=True):
            out.append(values)
    if not first and require_queries:
        raise BenchError(f"{direction}: no query has a positive; nothing to evaluate")
    if not first:
        first = [torch.empty(0, dtype=torch.int64)]
        ap, inp = [torch.empty(0, dtype=torch.float64)], [torch.empty(0, dtype=torch.float64)]
    counts = table.count[~missing]
    return DirectionResult(
        first_hit_rank=torch.cat(first),
        average_precision=torch.cat(ap),
        inverse_negative_penalty=torch.cat(inp),
        num_positives=counts,
        ks=tuple(ks),
        skipped_queries=int(missing.sum()),
    )


def _rows_per_chunk(gallery: int, chunk_bytes: int, itemsize: int = 4) -> int:
    # the float32 block plus headroom for the positives gathered from it
    per_row = max(gallery, 1) * (itemsize + 1 + 8)
    return max(1, min(chunk_bytes // per_row, 4096))


def _chunked(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


# --------------------------------------------------------------------------- public API


def evaluate_scores(
    similarity,
    text_ids,
    image_ids,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    skip_queries_without_positives: bool = False,
    rankings: Rankings | None = None,
) -> RetrievalResult:
    """Both directions from a precomputed (texts x images) similarity matrix (higher = closer).

    Text-to-image ranks each row over the images, image-to-text each column over the texts.
    Positives share a person id; ties are broken by gallery index.
    """
    sim = torch.as_tensor(similarity)
    if sim.dim() != 2:
        raise BenchError(f"similarity must be a (texts x images) matrix, got shape {tuple(sim.shape)}")
    if not sim.dtype.is_floating_point:
        raise BenchError(f"similarity must be floating point, got dtype {sim.dtype}")
    _check_finite("similarity", sim)
    n_text, n_image = sim.shape
    tid = _as_ids("text_ids", text_ids, n_text, "texts (similarity rows)")
    iid = _as_ids("image_ids", image_ids, n_image, "images (similarity columns)")
    sim = _ranked_dtype(sim)
    t_rows = _rows_per_chunk(n_image, chunk_bytes, sim.element_size())
    i_rows = _rows_per_chunk(n_text, chunk_bytes, sim.element_size())
    skip = skip_queries_without_positives
    collect = {"t2i": rankings.t2i, "i2t": rankings.i2t} if rankings is not None else {"t2i": None, "i2t": None}
    t2i = _direction(
        ((r, sim[r]) for r in _chunked(n_text, t_rows)), tid, iid, ks, skip, "t2i", collector=collect["t2i"]
    )
    i2t = _direction(
        ((r, sim[:, r].T.contiguous()) for r in _chunked(n_image, i_rows)),
        iid,
        tid,
        ks,
        skip,
        "i2t",
        collector=collect["i2t"],
    )
    return RetrievalResult(t2i=t2i, i2t=i2t)


def evaluate_direction(
    blocks: Iterable[tuple[slice, torch.Tensor]],
    query_ids,
    gallery_ids,
    direction: str,
    ks: Sequence[int] = DEFAULT_KS,
    skip_queries_without_positives: bool = False,
    collector: TopK | None = None,
) -> DirectionResult:
    """One direction from score blocks ``(query rows, rows x whole gallery)`` given in query order:
    for scores built a chunk at a time (a re-ranked shortlist), never held whole."""
    query_ids, gallery_ids = torch.as_tensor(query_ids), torch.as_tensor(gallery_ids)

    def checked() -> Iterator[tuple[slice, torch.Tensor]]:
        for rows, block in blocks:
            _check_finite(f"{direction} scores", block)
            yield rows, _ranked_dtype(block)

    skip = skip_queries_without_positives
    return _direction(checked(), query_ids, gallery_ids, ks, skip, direction, collector=collector)


def evaluate_embeddings(
    text_embeddings,
    image_embeddings,
    text_ids,
    image_ids,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    skip_queries_without_positives: bool = False,
    normalize: bool = False,
) -> RetrievalResult:
    """Both directions for cosine similarity of embeddings, one query chunk at a time.

    Embeddings are expected L2-normalised (pass ``normalize=True`` otherwise). The score blocks are
    computed on the embeddings' device, so CUDA tensors are evaluated on the GPU.
    """
    text, image = _checked_embeddings(text_embeddings, image_embeddings, normalize)
    score = cosine_scorer()
    return evaluate_sharded(
        Shard.of_embeddings(text, [slice(0, text.shape[0])]),
        Shard.of_embeddings(image, [slice(0, image.shape[0])]),
        text_ids,
        image_ids,
        score,
        ks=ks,
        chunk_bytes=chunk_bytes,
        skip_queries_without_positives=skip_queries_without_positives,
    )


def _checked_embeddings(text_embeddings, image_embeddings, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 (count x dim) embeddings of the same dim, finite, unit length when asked."""
    text = torch.as_tensor(text_embeddings)
    image = torch.as_tensor(image_embeddings)
    for name, emb in (("text_embeddings", text), ("image_embeddings", image)):
        if emb.dim() != 2:
            raise BenchError(f"{name} must be (count x dim), got shape {tuple(emb.shape)}")
        _check_finite(name, emb)
    if text.shape[1] != image.shape[1]:
        raise BenchError(
            f"embedding sizes differ: text_embeddings has dim {text.shape[1]}, "
            f"image_embeddings has dim {image.shape[1]}"
        )
    if normalize:
        text, image = unit_rows(text), unit_rows(image)
    text, image = text.to(torch.float32), image.to(torch.float32)
    for name, emb in (("text_embeddings", text), ("image_embeddings", image)):
        _check_finite(f"{name} in float32", emb)
    return text, image


# --------------------------------------------------------------------------- sharded evaluation

#: gallery items per score tile. Every score is computed inside a tile of this width (and a query
#: chunk padded to a multiple of ``QUERY_ROW_MULTIPLE``), so its bits do not depend on how the
#: gallery is split across processes: BLAS libraries choose their summation order by matrix shape
#: and thread count, and fixed tile shapes take the shape out of it.
SCORE_TILE = 4096
QUERY_ROW_MULTIPLE = 16
MIN_QUERY_ROWS = 32


@dataclass
class Shard:
    """This process's rows of a feature set split across processes (a tensor, or a dict of tensors
    with the same rows), and every process's row range, in rank order. ``items_last``: the tensor is
    stored (dim x items), the layout a score matmul reads fastest (twice the rate for chunks of a
    few dozen queries on a CPU)."""

    features: torch.Tensor | dict[str, torch.Tensor]
    ranges: list[slice]
    items_last: bool = False

    @classmethod
    def of_embeddings(cls, embeddings: torch.Tensor, ranges: list[slice]) -> Shard:
        """This process's (items x dim) embeddings, stored (dim x items) for the score matmul."""
        return cls(embeddings.T.contiguous(), ranges, items_last=True)

    @property
    def total(self) -> int:
        return self.ranges[-1].stop if self.ranges else 0


ScoreFunction = Callable[[Any, Any], torch.Tensor]


def cosine_scorer(tile: int = SCORE_TILE) -> ScoreFunction:
    """Scores of a query chunk against a gallery shard stored (dim x items), one fixed-width tile at
    a time. The block returned is overwritten by the next call: one buffer serves every chunk (a
    fresh block of tens of MB per chunk costs a CPU the page faults of new memory, about a third of
    the matmul's time)."""
    buffers = _Workspace()

    def score(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        rows = queries.shape[0]
        padded = -(-rows // QUERY_ROW_MULTIPLE) * QUERY_ROW_MULTIPLE
        queries = torch.nn.functional.pad(queries, (0, 0, 0, padded - rows))
        gallery = gallery.to(queries.device)
        out = buffers.get("scores", torch.Size((padded, gallery.shape[1])), queries.dtype, queries.device)
        for start in range(0, gallery.shape[1], tile):
            torch.mm(queries, gallery[:, start : start + tile], out=out[:, start : start + tile])
        return out[:rows]

    return score


Rows = slice | torch.Tensor  # a range of rows, or ascending row indices


def _owned_rows(ranges: list[slice], wanted: Rows, world: World, mine, others) -> torch.Tensor:
    """Rows ``wanted`` of something split by ``ranges``, on every rank: each owner broadcasts its part,
    ``mine(part)`` (its own rows, the part in its local numbering), into ``others(part)`` (an empty
    tensor of that part's shape, the part in the global numbering) on the other ranks."""
    pieces = []
    for owner, own in enumerate(ranges):
        if isinstance(wanted, slice):
            start, stop = max(wanted.start, own.start), min(wanted.stop, own.stop)
            part: Rows = slice(start, stop)
            local: Rows = slice(start - own.start, stop - own.start)
            empty = start >= stop
        else:
            part = wanted[(wanted >= own.start) & (wanted < own.stop)]
            local, empty = part - own.start, part.numel() == 0
        if not empty:
            pieces.append(world.broadcast(mine(local) if owner == world.rank else others(part), owner))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _rows_of(shard: Shard, wanted: Rows, world: World):
    """Rows ``wanted`` of a sharded feature set, on every rank: each owner broadcasts its part (a
    feature dict: a range of rows only)."""
    if isinstance(shard.features, dict):
        return _feature_rows_of(shard.features, shard.ranges, wanted, world)
    local = shard.features.T if shard.items_last else shard.features

    def others(part: Rows) -> torch.Tensor:
        size = part.stop - part.start if isinstance(part, slice) else part.numel()
        return torch.empty((size, *local.shape[1:]), dtype=local.dtype, device=local.device)

    return _owned_rows(shard.ranges, wanted, world, lambda part: local[part].contiguous(), others)


def _feature_rows_of(features: dict[str, torch.Tensor], ranges: list[slice], wanted: slice, world: World):
    """``_rows_of`` for a feature dict: the per-item tensors first, then the packed ones, whose size
    every rank learns from the items' lengths."""
    out = {key: _rows_of(Shard(value, ranges), wanted, world) for key, value in features.items() if not is_packed(key)}
    for key in [key for key in features if is_packed(key)]:
        out[key] = _packed_rows_of(features, key, out[PACKED_LENGTHS], ranges, wanted, world)
    return out


def _packed_rows_of(
    features: dict[str, torch.Tensor], key: str, lengths: torch.Tensor, ranges: list[slice], wanted: slice, world: World
) -> torch.Tensor:
    """The packed rows of items ``wanted`` (whose ``lengths`` every rank holds) of the packed ``key``."""
    packed = features[key]
    mine = {PACKED_LENGTHS: features[PACKED_LENGTHS], key: packed}

    def others(part: slice) -> torch.Tensor:
        size = int(lengths[part.start - wanted.start : part.stop - wanted.start].sum())
        return torch.empty((size, *packed.shape[1:]), dtype=packed.dtype, device=packed.device)

    return _owned_rows(ranges, wanted, world, lambda part: feature_rows(mine, part)[key].contiguous(), others)


def evaluate_sharded(
    texts: Shard,
    images: Shard,
    text_ids,
    image_ids,
    score: ScoreFunction,
    world: World = SINGLE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    skip_queries_without_positives: bool = False,
    rankings: Rankings | None = None,
) -> RetrievalResult:
    """Both directions when each process holds a shard of the texts and of the images and a pair's
    score is the same in both directions (cosine similarity): one pass of score blocks where it can.

    ``score(text_chunk, image_shard)`` gives a (chunk x shard) block. Text chunks travel to every
    process; each block ranks the chunk's texts over every process's images and, read by columns,
    adds the chunk's texts to the counts that rank this process's images over every text. Those
    counts need each image's positive scores before the pass: they are scored first in person-id
    groups (a few per cent of the work) and each is checked against the pass's own bits. Images are
    ranked in a second pass of their own (``rank_sharded``) should any differ (a BLAS that rounds by
    matrix shape), or when the columns of a process's images would not fit ``COLUMN_SLAB_CHUNKS``
    chunks' memory at a useful width (a gallery of a million images). No process holds more than
    its shards and a few blocks; every process returns the same result, identical to the
    one-process result."""
    tid = _as_ids("text_ids", text_ids, texts.total, "texts")
    iid = _as_ids("image_ids", image_ids, images.total, "images")
    skip = skip_queries_without_positives
    options = {"world": world, "ks": ks, "chunk_bytes": chunk_bytes, "skip": skip}
    step = query_chunk_rows(images.total, chunk_bytes)
    slab = _column_slab_width(images.ranges, texts.total, step, chunk_bytes)
    t2i_top, i2t_top = (rankings.t2i, rankings.i2t) if rankings is not None else (None, None)
    if slab is None:
        t2i = rank_sharded(texts, images, tid, iid, score, "t2i", collector=t2i_top, **options)
        i2t = rank_sharded(images, texts, iid, tid, score, "i2t", collector=i2t_top, **options)
        return RetrievalResult(t2i=t2i, i2t=i2t)
    own = images.ranges[world.rank]
    image_table = _positive_table(iid, tid)
    _queries_without_positives(image_table, skip, "i2t")  # on every rank, before any work
    image_table = _PositiveTable(image_table.index[own], image_table.count[own])
    scored = _positive_scores(texts, images, tid, image_table, score, world)
    columns = _ColumnCounts(image_table, scored, slab, texts.total)

    def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        for rows in _chunked(texts.total, step):
            block = score(_rows_of(texts, rows, world), images.features)
            yield rows, block
            columns.add(rows, block)
            if i2t_top is not None:  # this process's images are the queries of the block's columns
                i2t_top.add_columns(rows, block, own.start)

    t2i = _direction(blocks(), tid, iid, ks, skip, "t2i", own.start, world, collector=t2i_top)
    if bool(world.all_reduce(torch.tensor([columns.mismatched], dtype=torch.int32), "max")):
        if i2t_top is not None:  # ranked again from scratch: so are its rankings
            rankings.i2t = i2t_top = TopK(i2t_top.k, len(i2t_top.values))
        i2t = rank_sharded(images, texts, iid, tid, score, "i2t", collector=i2t_top, **options)
        return RetrievalResult(t2i=t2i, i2t=i2t)
    return RetrievalResult(t2i=t2i, i2t=_gathered(columns.result(ks), world))


#: the columns of a process's images are counted in slabs of up to this many chunks' memory ...
COLUMN_SLAB_CHUNKS = 2
#: ... and at least this many texts wide (narrower rows cost more per score than a pass of their own)
MIN_COLUMN_SLAB = 1024


def _column_slab_width(image_ranges: list[slice], texts: int, step: int, chunk_bytes: int) -> int | None:
    """Texts per slab of image columns (whole chunks of ``step`` texts), the same on every rank; None
    when the largest shard's columns do not fit at ``MIN_COLUMN_SLAB`` texts."""
    widest = max(r.stop - r.start for r in image_ranges)
    chunks = COLUMN_SLAB_CHUNKS * chunk_bytes // (max(widest, 1) * 4 * step)
    width = min(chunks * step, -(-texts // step) * step)
    return width if width >= min(MIN_COLUMN_SLAB, texts) and chunks else None


def _positive_scores(
    texts: Shard, images: Shard, text_ids: torch.Tensor, table: _PositiveTable, score: ScoreFunction, world: World
) -> torch.Tensor:
    """The score of each of this process's images with each of its positive texts (``table``, +inf
    for padding), scored with ``score`` in groups of texts taken in person-id order, so that a group
    meets few images: each text's positives are the images of its own person."""
    device = images.features.device
    scores = torch.full(table.index.shape, float("inf"), device=device)
    order = torch.argsort(text_ids, stable=True)
    group_of = torch.empty_like(order)
    group_of[order] = torch.arange(len(order)) // POSITIVE_GROUP
    pair_group = torch.where(table.index >= 0, group_of[table.index.clamp(min=0)], -1)
    for number, group in enumerate(_chunked(len(order), POSITIVE_GROUP)):
        indices = torch.sort(order[group]).values
        rows = _rows_of(texts, indices, world)  # on every rank: each owner broadcasts
        image_at, slot = (pair_group == number).nonzero(as_tuple=True)
        if image_at.numel() == 0:
            continue
        images_in_group, image_rows = torch.unique(image_at, return_inverse=True)
        block = score(rows, _gallery_items(images, images_in_group.to(device)))  # (group texts x its images)
        text_rows = torch.searchsorted(indices, table.index[image_at, slot])
        scores[image_at.to(device), slot.to(device)] = block[text_rows.to(device), image_rows.to(device)]
    return scores


#: texts per group when the positive pairs are scored before the pass
POSITIVE_GROUP = 512


def _gallery_items(shard: Shard, local: torch.Tensor) -> torch.Tensor:
    """Items ``local`` of this process's shard, in the shard's own layout (the scorer's gallery)."""
    return shard.features[:, local].contiguous() if shard.items_last else shard.features[local].contiguous()


class _ColumnCounts:
    """Image-to-text counts of this process's images, added up over slabs of text chunks: each slab
    of columns, transposed, is a shard of the texts, counted as a process counts its gallery shard."""

    def __init__(self, table: _PositiveTable, thresholds: torch.Tensor, slab: int, texts: int) -> None:
        self.table = table
        self.queries = table.count > 0  # images without a positive text are skipped (or refused earlier)
        self.every_image = bool(self.queries.all())
        device = thresholds.device
        self.index = table.index[self.queries].to(device)
        self.thresholds = thresholds[self.queries]
        self.counts = torch.zeros(self.index.shape, dtype=torch.int32, device=device)
        self.mismatched = False
        self.slab, self.slab_start, self.filled, self.texts = slab, 0, 0, texts
        self.columns = torch.empty(self.index.shape[0] * slab, dtype=thresholds.dtype, device=device)
        self.workspace = _Workspace()

    def add(self, rows: slice, block: torch.Tensor) -> None:
        """Check the chunk's positive scores against the ones scored first, and copy its columns."""
        images = self.index.shape[0]
        if self.mismatched or not images or block.shape[0] == 0:
            return
        mine = block if self.every_image else block[:, self.queries.to(block.device)]
        local = self.index - rows.start
        inside = (self.index >= 0) & (local >= 0) & (local < mine.shape[0])
        found = mine[local.clamp(0, mine.shape[0] - 1), torch.arange(images, device=mine.device)[:, None]]
        if bool((inside & (found != self.thresholds)).any()):
            self.mismatched = True
            return
        width = min(self.slab, self.texts - self.slab_start)
        slab = self.columns[: images * width].view(images, width)
        for start in range(0, mine.shape[1], TRANSPOSE_TILE):  # a tile that stays in cache
            tile = slice(start, start + TRANSPOSE_TILE)
            slab[tile, self.filled : self.filled + mine.shape[0]].copy_(mine[:, tile].T)
        self.filled += mine.shape[0]
        if self.filled == width:
            self.counts += _count_preceding(slab, self.thresholds, self.index - self.slab_start, self.workspace)
            self.slab_start, self.filled = self.slab_start + width, 0

    def result(self, ks: Sequence[int]) -> DirectionResult:
        positives = self.table.count[self.queries]
        first, ap, inp = _per_query(_ascending_ranks(self.counts, self.index >= 0), positives)
        return DirectionResult(first, ap, inp, positives, tuple(ks), int((~self.queries).sum()))


#: columns transposed at a time: a tile that stays in cache, four times the rate of a whole transpose
TRANSPOSE_TILE = 1024


def _gathered(mine: DirectionResult, world: World) -> DirectionResult:
    """Per-query results of each process's queries, concatenated in rank order on every rank."""
    parts = world.all_gather_object(
        (
            mine.first_hit_rank,
            mine.average_precision,
            mine.inverse_negative_penalty,
            mine.num_positives,
            mine.skipped_queries,
        )
    )
    if not sum(len(part[0]) for part in parts):
        raise BenchError("i2t: no query has a positive; nothing to evaluate")
    return DirectionResult(
        first_hit_rank=torch.cat([part[0] for part in parts]),
        average_precision=torch.cat([part[1] for part in parts]),
        inverse_negative_penalty=torch.cat([part[2] for part in parts]),
        num_positives=torch.cat([part[3] for part in parts]),
        ks=mine.ks,
        skipped_queries=sum(part[4] for part in parts),
    )


def query_chunk_rows(gallery: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Queries per chunk for a gallery of ``gallery`` items (all processes together): what the budget
    allows, in whole multiples of ``QUERY_ROW_MULTIPLE`` (no padding rows to compute), and at least
    ``MIN_QUERY_ROWS``, below which the score matmul runs at a fraction of its rate."""
    rows = _rows_per_chunk(gallery, chunk_bytes)
    return max(MIN_QUERY_ROWS, rows - rows % QUERY_ROW_MULTIPLE)


def rank_sharded(
    queries: Shard,
    gallery: Shard,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    score: ScoreFunction,
    direction: str,
    world: World = SINGLE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    skip: bool = False,
    collector: TopK | None = None,
) -> DirectionResult:
    """One direction: every query ranked over the whole gallery, each process holding a shard of
    both. Query chunks are sized by the whole gallery, so they are the same for any world size."""
    step = query_chunk_rows(gallery.total, chunk_bytes)
    blocks = ((rows, score(_rows_of(queries, rows, world), gallery.features)) for rows in _chunked(queries.total, step))
    start = gallery.ranges[world.rank].start
    return _direction(blocks, query_ids, gallery_ids, ks, skip, direction, start, world, collector=collector)


def evaluate_scored_once(
    texts: Shard,
    images: Shard,
    text_ids,
    image_ids,
    score_texts: ScoreFunction,
    world: World = SINGLE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    skip_queries_without_positives: bool = False,
    rankings: Rankings | None = None,
) -> RetrievalResult:
    """Both directions from one pass of an expensive scorer (a cross-modal method, where scoring,
    not ranking, is the cost): every pair is scored once, not once per direction.

    Each text chunk is scored against this process's image shard; the block ranks the chunk's texts
    (over every process's images, as ``rank_sharded`` does) and is kept. The kept columns, all texts
    x this process's images (4 bytes a pair: 1.6 GB for ICFG-PEDES in one process, half that on
    each of two), then rank this process's images over every text, and the per-image results are
    gathered in rank order. Both directions read the same score bits, for any world size."""
    tid = _as_ids("text_ids", text_ids, texts.total, "texts")
    iid = _as_ids("image_ids", image_ids, images.total, "images")
    skip = skip_queries_without_positives
    _queries_without_positives(_positive_table(iid, tid), skip, "i2t")  # on every rank, before any work
    own = images.ranges[world.rank]
    kept: torch.Tensor | None = None  # (all texts x this process's images), allocated on the scores' device

    def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        nonlocal kept
        for rows in _chunked(texts.total, query_chunk_rows(images.total, chunk_bytes)):
            block = score_texts(_rows_of(texts, rows, world), images.features)
            if kept is None:
                kept = torch.empty(texts.total, block.shape[1], dtype=block.dtype, device=block.device)
            kept[rows] = block
            yield rows, block

    t2i_top, i2t_top = (rankings.t2i, rankings.i2t) if rankings is not None else (None, None)
    t2i = _direction(blocks(), tid, iid, ks, skip, "t2i", own.start, world, collector=t2i_top)
    width = own.stop - own.start
    step = _rows_per_chunk(texts.total, chunk_bytes)
    columns = ((rows, kept[:, rows].T.contiguous()) for rows in _chunked(width, step)) if width else iter(())
    mine = _direction(
        columns, iid[own], tid, ks, skip, "i2t", require_queries=False, collector=i2t_top, query_offset=own.start
    )
    return RetrievalResult(t2i=t2i, i2t=_gathered(mine, world))
