"""The public functions of one process:
``evaluate_scores`` (a saved matrix), ``evaluate_direction`` (blocks built a chunk at a time) and
``evaluate_embeddings``. The full Q x G matrix is never held: queries are processed in chunks whose
score block fits a memory budget."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from tbps_bench.errors import BenchError
from tbps_bench.metrics import tuning
from tbps_bench.metrics.checks import as_ids, check_finite, checked_embeddings, ranked_dtype
from tbps_bench.metrics.direction import chunked, rank_direction, rows_per_chunk
from tbps_bench.metrics.results import DEFAULT_KS, DirectionResult, RetrievalResult
from tbps_bench.metrics.sharded import Shard, cosine_scorer, evaluate_sharded
from tbps_bench.rankings import Rankings, TopK, collectors


def evaluate_scores(
    similarity,
    text_ids,
    image_ids,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES,
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
    check_finite("similarity", sim)
    n_text, n_image = sim.shape
    tid = as_ids("text_ids", text_ids, n_text, "texts (similarity rows)")
    iid = as_ids("image_ids", image_ids, n_image, "images (similarity columns)")
    sim = ranked_dtype(sim)
    t_rows = rows_per_chunk(n_image, chunk_bytes, sim.element_size())
    i_rows = rows_per_chunk(n_text, chunk_bytes, sim.element_size())
    skip = skip_queries_without_positives
    t2i_top, i2t_top = collectors(rankings)
    t2i = rank_direction(((r, sim[r]) for r in chunked(n_text, t_rows)), tid, iid, ks, skip, "t2i", collector=t2i_top)
    i2t = rank_direction(
        ((r, sim[:, r].T.contiguous()) for r in chunked(n_image, i_rows)),
        iid,
        tid,
        ks,
        skip,
        "i2t",
        collector=i2t_top,
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
            check_finite(f"{direction} scores", block)
            yield rows, ranked_dtype(block)

    skip = skip_queries_without_positives
    return rank_direction(checked(), query_ids, gallery_ids, ks, skip, direction, collector=collector)


def evaluate_embeddings(
    text_embeddings,
    image_embeddings,
    text_ids,
    image_ids,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_bytes: int = tuning.DEFAULT_CHUNK_BYTES,
    skip_queries_without_positives: bool = False,
    normalize: bool = False,
) -> RetrievalResult:
    """Both directions for cosine similarity of embeddings, one query chunk at a time.

    Embeddings are expected L2-normalised (pass ``normalize=True`` otherwise). The score blocks are
    computed on the embeddings' device, so CUDA tensors are evaluated on the GPU.
    """
    text, image = checked_embeddings(text_embeddings, image_embeddings, normalize)
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
