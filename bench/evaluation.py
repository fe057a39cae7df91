"""One split, one method: encode (or reuse) the features of this process's shards, then score and
rank both directions. What it measured comes back as records, never as a dict it mutates."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tbps_bench.cache import FeatureCache
from tbps_bench.distributed import SINGLE, World
from tbps_bench.encoding import encode_images, encode_texts, take_truncation_flags
from tbps_bench.errors import BenchError
from tbps_bench.features import (
    STORAGE_DTYPES,
    Features,
    concat_features,
    feature_count,
    feature_rows,
    in_float32,
    pad_to,
)
from tbps_bench.fingerprint import source_fingerprint
from tbps_bench.methods import EMBEDDING, FrozenBackbone, Method, PairwiseMethod, ShortlistMethod, as_features
from tbps_bench.metrics import (
    SCORE_TILE,
    RetrievalResult,
    Shard,
    cosine_scorer,
    evaluate_scored_once,
    evaluate_scores,
    evaluate_sharded,
    unit_rows,
)
from tbps_bench.options import Amp, FeatureStorage, Scoring, parsed
from tbps_bench.rankings import Rankings
from tbps_bench.shortlist import PAIR_BATCH, evaluate_shortlisted
from tbps_bench.splits import EvalSplit


@dataclass(frozen=True)
class EvalSettings:
    """How one split is encoded and scored: what an evaluation and training's selection pass share."""

    batch_size: int = 64
    amp: Amp = Amp.NONE
    workers: int = 0
    #: precision of the stored features (cache and memory), recorded with the result
    feature_dtype: FeatureStorage = FeatureStorage.FP32
    #: gallery items per score tile, and so the granularity of sharding (recorded with the result)
    score_tile: int = SCORE_TILE
    #: (query, candidate) pairs per second-stage forward pass of a ShortlistMethod
    pair_batch: int = PAIR_BATCH

    def __post_init__(self) -> None:  # strings from Python callers become the option types, or one line
        object.__setattr__(self, "amp", parsed(Amp, self.amp, "amp"))
        object.__setattr__(self, "feature_dtype", parsed(FeatureStorage, self.feature_dtype, "feature_dtype"))

    @property
    def shard_unit(self) -> int:
        """The granularity of sharding: whole encoding batches and whole score tiles, so that every
        batch and every tile is the same computation for any number of processes."""
        return math.lcm(self.batch_size, self.score_tile)


@dataclass(frozen=True)
class EncodeTimings:
    images_s: float
    texts_s: float
    #: every block of the split came from the feature cache (on every process)
    images_cached: bool
    texts_cached: bool


@dataclass(frozen=True)
class EncodedSplit:
    """This process's shard of a split's image and text features."""

    images: Shard
    texts: Shard
    timings: EncodeTimings
    #: captions the method's tokenizer cut, over the whole split (None: its tokenizer does not say)
    truncated_captions: int | None


@dataclass(frozen=True)
class Timings:
    """Where an evaluation's time went (seconds), as the result file records it."""

    encode: EncodeTimings
    #: everything after encoding: scoring, ranking and the metrics
    metrics_s: float
    #: the part of ``metrics_s`` spent in a method's own pair scorer (pairwise and shortlist methods)
    pairwise_scoring_s: float | None = None

    def as_record(self, images: int, captions: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "encode_images_s": self.encode.images_s,
            "encode_texts_s": self.encode.texts_s,
            "cache_hits": {"images": self.encode.images_cached, "texts": self.encode.texts_cached},
        }
        if self.pairwise_scoring_s is not None:
            record["pairwise_scoring_s"] = self.pairwise_scoring_s
        record["metrics_s"] = self.metrics_s
        record["throughput"] = {
            "images_per_s": images / max(self.encode.images_s, 1e-9),
            "captions_per_s": captions / max(self.encode.texts_s, 1e-9),
        }
        record["total_s"] = self.encode.images_s + self.encode.texts_s + self.metrics_s
        return record


@dataclass(frozen=True)
class SplitEvaluation:
    retrieval: RetrievalResult
    scoring: Scoring
    timings: Timings
    truncated_captions: int | None
    #: what the evaluation decided beyond the method's protocol (a shortlist cut to the gallery)
    protocol: dict[str, Any]
    #: each query's top-K (``--save-rankings``), the same on every process
    rankings: Rankings | None = None


def encode_split(
    method: Method,
    split: EvalSplit,
    settings: EvalSettings,
    cache: FeatureCache,
    checkpoint_sha: str | None = None,
    project: bool = True,
    world: World = SINGLE,
) -> EncodedSplit:
    """This process's shard of the image and text features of a split, cached per block of
    ``settings.shard_unit`` rows (the same entries for any number of processes).

    For a method with a frozen backbone, what is cached is the backbone's output (independent of
    the checkpoint) and the trained projection is applied afterwards (unless ``project`` is False:
    training reads the backbone features themselves)."""
    frozen = isinstance(method, FrozenBackbone)
    common = {
        "method": method.registered_as or method.name,
        "class": f"{type(method).__module__}.{type(method).__qualname__}",
        "source_sha256": source_fingerprint(type(method)),
        "arguments": method.encoder_arguments(),
        "checkpoint_sha256": None if frozen else checkpoint_sha,
        "annotation_sha256": split.annotation_sha256,
        "dataset": split.dataset,
        "split": split.split,
        "limit": split.limit,
        "preprocessing": method.preprocessing(),
        "amp": settings.amp,
        # fp16 entries hold row-scaled values since the scale was introduced: older ones are not served
        "feature_dtype": "fp16-row-scaled" if settings.feature_dtype == "fp16" else settings.feature_dtype,
    }
    storage = STORAGE_DTYPES[settings.feature_dtype]
    unit = settings.shard_unit
    start = time.perf_counter()
    # the image files' manifest costs stat calls: only a cache that is read or written needs it
    image_key = {**common, "modality": "image", "images": split.image_manifest_sha256() if cache.enabled else None}
    image_ranges = world.shards(len(split.image_paths), unit)
    images, images_cached = _encode_blocks(
        cache,
        image_key,
        image_ranges[world.rank],
        unit,
        lambda rows: encode_images(method, split, settings.batch_size, settings.amp, settings.workers, rows, storage),
        world,
    )
    if frozen and project:
        images = _projected(method.project_images, images, method.device)
    images_s = time.perf_counter() - start
    start = time.perf_counter()
    text_ranges = world.shards(len(split.captions), unit)
    texts, texts_cached = _encode_blocks(
        cache,
        {**common, "modality": "text", **({"captions": split.caption_sha256} if split.caption_sha256 else {})},
        text_ranges[world.rank],
        unit,
        lambda rows: encode_texts(method, split, settings.batch_size, settings.amp, rows, storage),
        world,
    )
    flags = take_truncation_flags(texts)
    truncated = None
    if flags is not None:
        truncated = int(world.all_reduce(flags.sum(dtype=torch.int64).reshape(1))[0])
    if frozen and project:
        texts = _projected(method.project_texts, texts, method.device)
    timings = EncodeTimings(images_s, time.perf_counter() - start, images_cached, texts_cached)
    return EncodedSplit(Shard(images, image_ranges), Shard(texts, text_ranges), timings, truncated)


def _encode_blocks(
    cache: FeatureCache,
    key: dict[str, Any],
    rows: slice,
    unit: int,
    encode: Callable[[slice], Features],
    world: World,
) -> tuple[Features, bool]:
    """Features of ``rows``, block by block through the cache; True when every block was a hit (on
    every process). Trailing sizes are padded to the largest over all processes, as one process
    padding the whole split would."""
    parts, hits = [], True
    for start in range(rows.start, rows.stop, unit):
        block = slice(start, min(start + unit, rows.stop))
        features, hit = cache.get_or_compute({**key, "rows": [block.start, block.stop]}, lambda b=block: encode(b))
        parts.append(features)
        hits = hits and hit
    local = concat_features(parts) if parts else None
    layouts = [
        item
        for item in world.all_gather_object({k: (v.dtype, v.shape[1:]) for k, v in local.items()} if local else None)
        if item is not None
    ]
    widest = {key: [max(n) for n in zip(*(item[key][1] for item in layouts), strict=True)] for key in layouts[0]}
    if local is None:  # a process with no rows of this split (fewer blocks than processes)
        local = {key: torch.empty((0, *widest[key]), dtype=dtype) for key, (dtype, _) in layouts[0].items()}
    features = {key: pad_to(value, widest[key]) for key, value in local.items()}
    return features, all(world.all_gather_object(hits))


def _projected(project, features: Features, device: torch.device) -> Features:
    with torch.inference_mode():
        out = as_features(project(in_float32(features, device)))
    return {k: v.float().cpu() for k, v in out.items()}


def evaluate_split(
    method: Method,
    split: EvalSplit,
    settings: EvalSettings,
    cache: FeatureCache,
    world: World = SINGLE,
    checkpoint_sha: str | None = None,
    rankings_k: int | None = None,
) -> SplitEvaluation:
    """Encode (or reuse) features and compute both directions, each process on its shards; with
    ``rankings_k``, also keep each query's top ``rankings_k``."""
    encoded = encode_split(method, split, settings, cache, checkpoint_sha, world=world)
    images, texts = encoded.images, encoded.texts
    start = time.perf_counter()
    protocol: dict[str, Any] = {}
    pair_seconds = None
    rankings = None
    if rankings_k is not None:
        rankings = Rankings.of(rankings_k, len(split.captions), len(split.image_paths))
    if isinstance(method, ShortlistMethod):
        retrieval, effective_k = evaluate_shortlisted(
            method,
            world.gather_features(images.features),
            world.gather_features(texts.features),
            split.caption_pids,
            split.image_pids,
            settings.amp,
            settings.pair_batch,
            world,
            rankings,
        )
        scoring = Scoring.SHORTLIST
        pair_seconds = time.perf_counter() - start  # first stage, pairs and ranking
        protocol = {"shortlist_k_effective": effective_k, "pair_batch": settings.pair_batch}
    elif isinstance(method, PairwiseMethod):
        retrieval, pair_seconds = _evaluate_pairwise(method, split, images, texts, settings.score_tile, world, rankings)
        scoring = Scoring.PAIRWISE
    else:
        text_embeddings, image_embeddings = _embeddings(method, texts, images)
        retrieval = evaluate_sharded(
            Shard.of_embeddings(text_embeddings, texts.ranges),
            Shard.of_embeddings(image_embeddings, images.ranges),
            split.caption_pids,
            split.image_pids,
            cosine_scorer(settings.score_tile),
            world,
            rankings=rankings,
        )
        scoring = Scoring.COSINE
    timings = Timings(encoded.timings, time.perf_counter() - start, pair_seconds)
    merged = rankings.merged(world) if rankings is not None else None
    return SplitEvaluation(retrieval, scoring, timings, encoded.truncated_captions, protocol, merged)


def _embeddings(method: Method, texts: Shard, images: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's unit-length text and image embeddings, on the method's device."""
    if EMBEDDING not in images.features or EMBEDDING not in texts.features:
        raise BenchError(
            f"method '{method.name}' returned features {sorted(images.features)} / {sorted(texts.features)}; a "
            f"dual encoder returns one embedding tensor (a PairwiseMethod scores feature dicts)"
        )
    text, image = texts.features[EMBEDDING], images.features[EMBEDDING]
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise BenchError(
            f"method '{method.name}' returned image features {tuple(image.shape)} and text "
            f"features {tuple(text.shape)}; expected (n, d) with the same d"
        )
    return unit_rows(text).to(method.device), unit_rows(image).to(method.device)


def _evaluate_pairwise(
    method: PairwiseMethod,
    split: EvalSplit,
    images: Shard,
    texts: Shard,
    tile: int,
    world: World,
    rankings: Rankings | None = None,
) -> tuple[RetrievalResult, float]:
    """Pairwise scores tile by tile when a pair's score needs nothing else (each process scores its
    shard, each pair once for both directions); otherwise the whole matrix at once, in every
    process. Also returns the seconds spent scoring."""
    start = time.perf_counter()
    if not method.scores_blockwise:
        images_all, texts_all = (in_float32(world.gather_features(f.features)) for f in (images, texts))
        scores = method.score_all(images_all, texts_all)
        seconds = time.perf_counter() - start
        return evaluate_scores(scores, split.caption_pids, split.image_pids, rankings=rankings), seconds

    def tiles(count: int) -> Iterator[slice]:
        return (slice(t, min(t + tile, count)) for t in range(0, count, tile))

    def score_texts(text_chunk: Features, image_shard: Features) -> torch.Tensor:
        count = feature_count(image_shard)
        text_chunk = in_float32(text_chunk)
        blocks = [method.score_all(in_float32(feature_rows(image_shard, t)), text_chunk) for t in tiles(count)]
        return torch.cat(blocks, 1) if blocks else torch.empty(feature_count(text_chunk), 0)

    retrieval = evaluate_scored_once(
        texts, images, split.caption_pids, split.image_pids, score_texts, world, rankings=rankings
    )
    return retrieval, time.perf_counter() - start  # scoring and ranking, interleaved
