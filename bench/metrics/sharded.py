"""The sharded path, where each process holds a shard of the texts and of the images: rows fetched
from their owners, fixed score tiles (so a score's bits do not depend on the world size), and both
directions from one pass of score blocks (``evaluate_sharded``, ``evaluate_scored_once``). Every
process returns the one-process result."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tbps_bench.distributed import SINGLE, World
from tbps_bench.errors import BenchError
from tbps_bench.features import PACKED_LENGTHS, feature_rows, is_packed
from tbps_bench.metrics import tuning
from tbps_bench.metrics.checks import as_ids
from tbps_bench.metrics.direction import chunked, queries_without_positives, rank_direction, rows_per_chunk
from tbps_bench.metrics.kernel import (
    PositiveTable,
    Workspace,
    ascending_ranks,
    count_preceding,
    per_query,
    positive_table,
)
from tbps_bench.metrics.results import DEFAULT_KS, DirectionResult, RetrievalResult
from tbps_bench.rankings import Rankings, TopK, collectors


@dataclass
class Shard:
    """This process's rows of a feature set split across processes (a tensor, or a dict of tensors
    with the same rows), and every process's row range, in rank order. ``items_last``: the tensor is
    stored (dim x items), the layout a score matmul reads fastest (much faster for chunks of a
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


def cosine_scorer(tile: int = tuning.SCORE_TILE) -> ScoreFunction:
    """Scores of a query chunk against a gallery shard stored (dim x items), one fixed-width tile at
    a time. The block returned is overwritten by the next call: one buffer serves every chunk (a
    fresh block of tens of MB per chunk costs a CPU the page faults of new memory, a large share of
    the matmul's time)."""
    buffers = Workspace()

    def score(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        rows = queries.shape[0]
        padded = -(-rows // tuning.QUERY_ROW_MULTIPLE) * tuning.QUERY_ROW_MULTIPLE
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
    chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES,
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
    matrix shape), or when the columns of a process's images would not fit ``tuning.COLUMN_SLAB_CHUNKS``
    chunks' memory at a useful width (a gallery of a million images). No process holds more than
    its shards and a few blocks; every process returns the same result, identical to the
    one-process result."""
    tid = as_ids("text_ids", text_ids, texts.total, "texts")
    iid = as_ids("image_ids", image_ids, images.total, "images")
    skip = skip_queries_without_positives
    options = {"world": world, "ks": ks, "chunk_bytes": chunk_bytes, "skip": skip}
    step = query_chunk_rows(images.total, chunk_bytes)
    slab = _column_slab_width(images.ranges, texts.total, step, chunk_bytes)
    t2i_top, i2t_top = collectors(rankings)
    if slab is None:
        t2i = rank_sharded(texts, images, tid, iid, score, "t2i", collector=t2i_top, **options)
        i2t = rank_sharded(images, texts, iid, tid, score, "i2t", collector=i2t_top, **options)
        return RetrievalResult(t2i=t2i, i2t=i2t)
    own = images.ranges[world.rank]
    image_table = positive_table(iid, tid)
    queries_without_positives(image_table, skip, "i2t")  # on every rank, before any work
    image_table = PositiveTable(image_table.index[own], image_table.count[own])
    scored = _positive_scores(texts, images, tid, image_table, score, world)
    columns = _ColumnCounts(image_table, scored, slab, texts.total)

    def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        for rows in chunked(texts.total, step):
            block = score(_rows_of(texts, rows, world), images.features)
            yield rows, block
            columns.add(rows, block)
            if i2t_top is not None:  # this process's images are the queries of the block's columns
                i2t_top.add_columns(rows, block, own.start)

    t2i = rank_direction(blocks(), tid, iid, ks, skip, "t2i", own.start, world, collector=t2i_top)
    if bool(world.all_reduce(torch.tensor([columns.mismatched], dtype=torch.int32), "max")):
        if i2t_top is not None:  # ranked again from scratch: so are its rankings
            rankings.i2t = i2t_top = TopK(i2t_top.k, len(i2t_top.values))
        i2t = rank_sharded(images, texts, iid, tid, score, "i2t", collector=i2t_top, **options)
        return RetrievalResult(t2i=t2i, i2t=i2t)
    return RetrievalResult(t2i=t2i, i2t=_gathered(columns.result(ks), world))


def _column_slab_width(image_ranges: list[slice], texts: int, step: int, chunk_bytes: int) -> int | None:
    """Texts per slab of image columns (whole chunks of ``step`` texts), the same on every rank; None
    when the largest shard's columns do not fit at ``tuning.MIN_COLUMN_SLAB`` texts."""
    widest = max(r.stop - r.start for r in image_ranges)
    chunks = tuning.COLUMN_SLAB_CHUNKS * chunk_bytes // (max(widest, 1) * 4 * step)
    width = min(chunks * step, -(-texts // step) * step)
    return width if width >= min(tuning.MIN_COLUMN_SLAB, texts) and chunks else None


def _positive_scores(
    texts: Shard, images: Shard, text_ids: torch.Tensor, table: PositiveTable, score: ScoreFunction, world: World
) -> torch.Tensor:
    """The score of each of this process's images with each of its positive texts (``table``, +inf
    for padding), scored with ``score`` in groups of texts taken in person-id order, so that a group
    meets few images: each text's positives are the images of its own person."""
    device = images.features.device
    scores = torch.full(table.index.shape, float("inf"), device=device)
    order = torch.argsort(text_ids, stable=True)
    group_of = torch.empty_like(order)
    group_of[order] = torch.arange(len(order)) // tuning.POSITIVE_GROUP
    pair_group = torch.where(table.index >= 0, group_of[table.index.clamp(min=0)], -1)
    for number, group in enumerate(chunked(len(order), tuning.POSITIVE_GROUP)):
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


def _gallery_items(shard: Shard, local: torch.Tensor) -> torch.Tensor:
    """Items ``local`` of this process's shard, in the shard's own layout (the scorer's gallery)."""
    return shard.features[:, local].contiguous() if shard.items_last else shard.features[local].contiguous()


class _ColumnCounts:
    """Image-to-text counts of this process's images, added up over slabs of text chunks: each slab
    of columns, transposed, is a shard of the texts, counted as a process counts its gallery shard."""

    def __init__(self, table: PositiveTable, thresholds: torch.Tensor, slab: int, texts: int) -> None:
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
        self.workspace = Workspace()

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
        for start in range(0, mine.shape[1], tuning.TRANSPOSE_TILE):  # a tile that stays in cache
            tile = slice(start, start + tuning.TRANSPOSE_TILE)
            slab[tile, self.filled : self.filled + mine.shape[0]].copy_(mine[:, tile].T)
        self.filled += mine.shape[0]
        if self.filled == width:
            self.counts += count_preceding(slab, self.thresholds, self.index - self.slab_start, self.workspace)
            self.slab_start, self.filled = self.slab_start + width, 0

    def result(self, ks: Sequence[int]) -> DirectionResult:
        positives = self.table.count[self.queries]
        first, ap, inp = per_query(ascending_ranks(self.counts, self.index >= 0), positives)
        return DirectionResult(first, ap, inp, positives, tuple(ks), int((~self.queries).sum()))


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


def query_chunk_rows(gallery: int, chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES) -> int:
    """Queries per chunk for a gallery of ``gallery`` items (all processes together): what the budget
    allows, in whole multiples of ``tuning.QUERY_ROW_MULTIPLE`` (no padding rows to compute), and at least
    ``tuning.MIN_QUERY_ROWS``, below which the score matmul runs at a fraction of its rate."""
    rows = rows_per_chunk(gallery, chunk_bytes)
    return max(tuning.MIN_QUERY_ROWS, rows - rows % tuning.QUERY_ROW_MULTIPLE)


def rank_sharded(
    queries: Shard,
    gallery: Shard,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    score: ScoreFunction,
    direction: str,
    world: World = SINGLE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES,
    skip: bool = False,
    collector: TopK | None = None,
) -> DirectionResult:
    """One direction: every query ranked over the whole gallery, each process holding a shard of
    both. Query chunks are sized by the whole gallery, so they are the same for any world size."""
    step = query_chunk_rows(gallery.total, chunk_bytes)
    blocks = ((rows, score(_rows_of(queries, rows, world), gallery.features)) for rows in chunked(queries.total, step))
    start = gallery.ranges[world.rank].start
    return rank_direction(blocks, query_ids, gallery_ids, ks, skip, direction, start, world, collector=collector)


def evaluate_scored_once(
    texts: Shard,
    images: Shard,
    text_ids,
    image_ids,
    score_texts: ScoreFunction,
    world: World = SINGLE,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES,
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
    tid = as_ids("text_ids", text_ids, texts.total, "texts")
    iid = as_ids("image_ids", image_ids, images.total, "images")
    skip = skip_queries_without_positives
    queries_without_positives(positive_table(iid, tid), skip, "i2t")  # on every rank, before any work
    own = images.ranges[world.rank]
    kept: torch.Tensor | None = None  # (all texts x this process's images), allocated on the scores' device

    def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        nonlocal kept
        for rows in chunked(texts.total, query_chunk_rows(images.total, chunk_bytes)):
            block = score_texts(_rows_of(texts, rows, world), images.features)
            if kept is None:
                kept = torch.empty(texts.total, block.shape[1], dtype=block.dtype, device=block.device)
            kept[rows] = block
            yield rows, block

    t2i_top, i2t_top = collectors(rankings)
    t2i = rank_direction(blocks(), tid, iid, ks, skip, "t2i", own.start, world, collector=t2i_top)
    width = own.stop - own.start
    step = rows_per_chunk(texts.total, chunk_bytes)
    columns = ((rows, kept[:, rows].T.contiguous()) for rows in chunked(width, step)) if width else iter(())
    mine = rank_direction(
        columns, iid[own], tid, ks, skip, "i2t", require_queries=False, collector=i2t_top, query_offset=own.start
    )
    return RetrievalResult(t2i=t2i, i2t=_gathered(mine, world))
