"""One direction ranked from score blocks: each query's positives found in the block, their ranks
counted by the kernel (summed over the processes holding gallery shards), and the per-query
results. Every evaluation path ends here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from tbps_bench.distributed import SINGLE, World
from tbps_bench.errors import BenchError
from tbps_bench.metrics.kernel import (
    PositiveTable,
    Workspace,
    ascending_ranks,
    count_preceding,
    per_query,
    positive_table,
)
from tbps_bench.metrics.results import DirectionResult
from tbps_bench.rankings import TopK


def ranks_in_block(
    scores: torch.Tensor,
    positives: torch.Tensor,
    gallery_start: int = 0,
    world: World = SINGLE,
    workspace: Workspace | None = None,
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
        counts = count_preceding(scores, thresholds, local, workspace)
    else:
        counts = torch.zeros(positives.shape, dtype=torch.int32, device=scores.device)
    return ascending_ranks(world.all_reduce(counts, "sum"), valid)


def queries_without_positives(table: PositiveTable, skip: bool, direction: str) -> torch.Tensor:
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


def rank_direction(
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
    table = positive_table(query_ids, gallery_ids)
    missing = queries_without_positives(table, skip_queries_without_positives, direction)
    first, ap, inp = [], [], []
    workspace = Workspace()
    for rows, block in blocks:
        if collector is not None:  # each query's top-K items, from the block already scored
            collector.add(slice(rows.start + query_offset, rows.stop + query_offset), block, gallery_start)
        keep = ~missing[rows]
        positives = table.index[rows][keep].to(block.device)
        if positives.shape[0] == 0:
            continue
        block = block[keep.to(block.device)] if not bool(keep.all()) else block
        ranks = ranks_in_block(block, positives, gallery_start, world, workspace)
        for values, out in zip(per_query(ranks, table.count[rows][keep]), (first, ap, inp), strict=True):
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


def rows_per_chunk(gallery: int, chunk_bytes: int, itemsize: int = 4) -> int:
    # the float32 block plus headroom for the positives gathered from it
    per_row = max(gallery, 1) * (itemsize + 1 + 8)
    return max(1, min(chunk_bytes // per_row, 4096))


def chunked(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
