"""The shortlist re-ranking protocol: a dual-encoder first stage picks each query's top k, a
method's pair scorer re-scores those pairs, and every other item is filled in below them.

Both directions come from one set of pair scores: the (text, image) pairs of every text's image
shortlist and of every image's text shortlist are scored once each. The pairs are sorted by image
and cut into fixed batches, so each batch (and so each score's bits) is the same for any number of
processes; processes score contiguous runs of batches and share the scores. Ranking then builds the
final rows a chunk at a time, never the whole matrix."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tbps_bench.distributed import SINGLE, World
from tbps_bench.encoding import autocast, progress
from tbps_bench.errors import BenchError
from tbps_bench.features import Features, feature_count, feature_rows, in_float32
from tbps_bench.methods import EMBEDDING, FillRule, Shortlist, ShortlistMethod, ShortlistScores
from tbps_bench.metrics import DirectionResult, RetrievalResult, evaluate_direction, unit_rows
from tbps_bench.rankings import Rankings, TopK, collectors

#: pairs per second-stage forward pass unless the caller says otherwise. Not larger: on CPU a pass's
#: largest temporaries (a BERT-base feed-forward's activations) then outgrow what the C allocator
#: re-uses, and every pass pays the kernel for fresh pages (docs/benchmarks.md)
PAIR_BATCH = 64
#: first-stage and ranking chunks hold about this many scores
CHUNK_SCORES = 1 << 22


@dataclass(frozen=True)
class DirectionShortlist:
    """One direction's shortlists: ``index[q]`` are query q's k candidates, best first stage first."""

    index: torch.Tensor  # (queries, k) int64 gallery indices
    k: int
    #: the smallest and largest first-stage score of the whole matrix (what a fusion normalises by)
    first_stage_min: float
    first_stage_max: float


def _chunks(total: int, width: int) -> Iterator[slice]:
    step = max(1, CHUNK_SCORES // max(width, 1))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def first_stage(queries: torch.Tensor, gallery: torch.Tensor, rows: slice) -> torch.Tensor:
    """Cosine scores of queries ``rows`` against the whole gallery (unit embeddings, fp32)."""
    return queries[rows] @ gallery.T


def top_k(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> DirectionShortlist:
    """Each query's k gallery items of highest first-stage score, ties broken by gallery index (a
    stable descending sort, so the shortlist never depends on the sort's implementation), and the
    range of the first-stage scores, taken in the same pass."""
    parts, low, high = [], float("inf"), float("-inf")
    for rows in _chunks(len(queries), len(gallery)):
        block = first_stage(queries, gallery, rows)
        low, high = min(low, float(block.min())), max(high, float(block.max()))
        parts.append(torch.sort(block, dim=1, descending=True, stable=True).indices[:, :k].cpu())
    return DirectionShortlist(torch.cat(parts), k, low, high)


def pair_keys(t2i: DirectionShortlist, i2t: DirectionShortlist, n_texts: int) -> torch.Tensor:
    """Every (text, image) pair of either direction once, as ``image * n_texts + text``, sorted:
    grouped by image, texts in order within an image."""
    texts = torch.arange(len(t2i.index)).repeat_interleave(t2i.k)
    images = torch.arange(len(i2t.index)).repeat_interleave(i2t.k)
    keys = torch.cat([t2i.index.reshape(-1) * n_texts + texts, images * n_texts + i2t.index.reshape(-1)])
    return torch.unique(keys)  # sorted


def score_pairs(
    method: ShortlistMethod,
    images: Features,
    texts: Features,
    keys: torch.Tensor,
    n_texts: int,
    amp: str,
    pair_batch: int,
    world: World = SINGLE,
) -> torch.Tensor:
    """The second-stage score of every pair ``keys`` (sorted), in fixed batches of ``pair_batch``;
    each process scores a contiguous run of batches and every process returns all the scores."""
    batches = [slice(s, min(len(keys), s + pair_batch)) for s in range(0, len(keys), pair_batch)]
    mine = batches[world.shard(len(batches), 1)]
    text_part = {k: v for k, v in texts.items() if k != EMBEDDING}
    image_part = {k: v for k, v in images.items() if k != EMBEDDING}
    device, scores = method.device, []
    with torch.inference_mode():
        for batch in progress(mine, len(mine), "re-ranking pairs"):
            image_of_pair, text_of_pair = keys[batch] // n_texts, keys[batch] % n_texts
            distinct, pair_image = torch.unique_consecutive(image_of_pair, return_inverse=True)
            image_rows = in_float32(feature_rows(image_part, distinct), device)
            text_rows = in_float32(feature_rows(text_part, text_of_pair), device)
            with autocast(device, amp):
                out = method.score_pairs(image_rows, text_rows, pair_image.to(device))
            out = torch.as_tensor(out).reshape(-1)
            if out.shape[0] != batch.stop - batch.start:
                raise BenchError(
                    f"method '{method.name}' score_pairs returned {out.shape[0]} scores for "
                    f"{batch.stop - batch.start} pairs"
                )
            scores.append(out.float().cpu())
    local = torch.cat(scores) if scores else torch.empty(0)
    bad = ~torch.isfinite(local)
    if bool(bad.any()):
        raise BenchError(f"method '{method.name}' score_pairs returned NaN/inf for {int(bad.sum())} pairs")
    return world.gather_rows(local)


def _second_stage_of(shortlist: DirectionShortlist, keys: torch.Tensor, scores: torch.Tensor, key_of) -> torch.Tensor:
    """(queries, k) second-stage scores of a direction's shortlist, looked up among the scored pairs."""
    wanted = key_of(shortlist.index)
    return scores[torch.searchsorted(keys, wanted.reshape(-1))].reshape(wanted.shape)


def final_rows(
    rows: slice,
    shortlist: DirectionShortlist,
    second: torch.Tensor,
    protocol: Shortlist,
    first_stage_rows: torch.Tensor | None,
    gallery: int,
) -> torch.Tensor:
    """The final scores of queries ``rows``: second-stage scores on the shortlist and, elsewhere,
    the method's fill value (``AUTHORS``) or the first-stage scores strictly below every shortlisted
    item (``FIRST_STAGE``: the shortlist becomes integers above the largest first-stage score, in
    the order of its second-stage scores, ties by gallery index)."""
    index, values = shortlist.index[rows], second[rows]
    if protocol.fill is FillRule.AUTHORS:
        block = torch.full((len(index), gallery), protocol.fill_value, dtype=torch.float32)
        return block.scatter_(1, index, values.float())
    block = first_stage_rows.float().cpu()
    by_index = torch.argsort(index, dim=1)
    index, values = index.gather(1, by_index), values.gather(1, by_index)
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    ceiling = float(torch.ceil(block.abs().max())) + 1.0
    ordinal = torch.arange(shortlist.k, 0, -1, dtype=torch.float32).expand(len(index), -1)
    return block.scatter_(1, index.gather(1, order), ceiling + ordinal)


def _rank(
    method: ShortlistMethod,
    shortlist: DirectionShortlist,
    second: torch.Tensor,
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_ids: torch.Tensor,
    gallery_ids: torch.Tensor,
    direction: str,
    collector: TopK | None = None,
) -> DirectionResult:
    protocol = method.shortlist
    fused = type(method).final_rows is not ShortlistMethod.final_rows
    reads_first_stage = fused or protocol.fill is FillRule.FIRST_STAGE
    low, high = shortlist.first_stage_min, shortlist.first_stage_max
    scores = ShortlistScores(direction, shortlist.index, second, len(gallery), low, high) if fused else None

    def blocks():
        for rows in _chunks(len(queries), len(gallery)):
            first = first_stage(queries, gallery, rows).cpu() if reads_first_stage else None
            block = method.final_rows(scores, rows, first) if fused else None
            if block is None:
                block = final_rows(rows, shortlist, second, protocol, first, len(gallery))
            yield rows, block

    return evaluate_direction(blocks(), query_ids, gallery_ids, direction, collector=collector)


def _unit_embeddings(method: ShortlistMethod, features: Features, what: str) -> torch.Tensor:
    if EMBEDDING not in features:
        raise BenchError(f"method '{method.name}' {what} features have no '{EMBEDDING}' for the first stage")
    embedding = features[EMBEDDING]
    if embedding.dim() != 2:
        raise BenchError(f"method '{method.name}' {what} '{EMBEDDING}' is {tuple(embedding.shape)}; expected (n, d)")
    return unit_rows(embedding).to(method.device)


def evaluate_shortlisted(
    method: ShortlistMethod,
    images: Features,
    texts: Features,
    caption_pids: torch.Tensor,
    image_pids: torch.Tensor,
    amp: str = "none",
    pair_batch: int = PAIR_BATCH,
    world: World = SINGLE,
    rankings: Rankings | None = None,
) -> tuple[RetrievalResult, dict[str, int]]:
    """Both directions under the method's shortlist protocol, from every item's features (each
    process holds them all: any item can be on any shortlist); returns the result and each
    direction's effective shortlist size (k, or the whole gallery when it is smaller)."""
    n_images, n_texts = feature_count(images), feature_count(texts)
    protocol = method.shortlist
    text_unit, image_unit = _unit_embeddings(method, texts, "text"), _unit_embeddings(method, images, "image")
    k_t2i, k_i2t = min(protocol.k, n_images), min(protocol.k, n_texts)
    for direction, size, gallery in (("t2i", k_t2i, "images"), ("i2t", k_i2t, "texts")):
        if size < protocol.k and world.is_main:
            print(
                f"note: {direction}: k={protocol.k} is larger than the gallery ({size} {gallery}); the whole "
                "gallery is re-ranked",
                file=sys.stderr,
            )
    t2i = top_k(text_unit, image_unit, k_t2i)
    i2t = top_k(image_unit, text_unit, k_i2t)
    keys = pair_keys(t2i, i2t, n_texts)
    scores = score_pairs(method, images, texts, keys, n_texts, amp, pair_batch, world)
    t2i_second = _second_stage_of(t2i, keys, scores, lambda index: index * n_texts + torch.arange(len(index))[:, None])
    i2t_second = _second_stage_of(i2t, keys, scores, lambda index: torch.arange(len(index))[:, None] * n_texts + index)
    caption_pids, image_pids = torch.as_tensor(caption_pids), torch.as_tensor(image_pids)
    t2i_top, i2t_top = collectors(rankings)
    result = RetrievalResult(
        t2i=_rank(method, t2i, t2i_second, text_unit, image_unit, caption_pids, image_pids, "t2i", t2i_top),
        i2t=_rank(method, i2t, i2t_second, image_unit, text_unit, image_pids, caption_pids, "i2t", i2t_top),
    )
    return result, {"t2i": k_t2i, "i2t": k_i2t}
