"""The evaluation harness: one (method, dataset) pair in, one result file out."""

from __future__ import annotations

import difflib
import functools
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tbps_bench.adapters import load_dataset
from tbps_bench.arguments import accepted_arguments, check_method_argument_values
from tbps_bench.distributed import SINGLE, World, describe
from tbps_bench.encoding import FeatureCache, count_truncated, encode_images, encode_texts
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
from tbps_bench.fileio import sha256_file, sha256_json, sha256_path
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
from tbps_bench.provenance import provenance
from tbps_bench.rankings import Rankings, ranked_items, rankings_path, write_rankings
from tbps_bench.registry import METHODS
from tbps_bench.results import build_result, new_run_id, result_path, write_result
from tbps_bench.shortlist import PAIR_BATCH, evaluate_shortlisted
from tbps_bench.splits import EvalSplit


@dataclass
class EvalOptions:
    data_root: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    amp: Amp = Amp.NONE
    limit: int | None = None
    out_dir: str = "results"
    split: str = "test"
    seed: int = 0
    method_args: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True
    workers: int = 0
    #: gallery items per score tile, and so the granularity of sharding (recorded with the result)
    score_tile: int = SCORE_TILE
    #: precision of the stored features (cache and memory): fp32, bf16 or fp16 (recorded)
    feature_dtype: FeatureStorage = FeatureStorage.FP32
    #: (query, candidate) pairs per second-stage forward pass of a ShortlistMethod
    pair_batch: int = PAIR_BATCH
    #: keep each query's top-K gallery items and scores, both directions (a ``.rankings.npz`` beside
    #: the result); None: not kept
    save_rankings: int | None = None

    def __post_init__(self) -> None:  # strings from Python callers become the option types, or one line
        self.amp = parsed(Amp, self.amp, "amp")
        self.feature_dtype = parsed(FeatureStorage, self.feature_dtype, "feature_dtype")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"--device must be auto, cpu or cuda; got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


def build_method(name: str, device: torch.device, checkpoint: str | None, args: dict[str, Any]) -> Method:
    factory = METHODS.load(name)
    try:
        method = factory(device=device, checkpoint=checkpoint, **args)
    except BenchError:
        raise
    except TypeError as exc:
        raise BenchError(f"method '{name}' does not accept these arguments {sorted(args)}: {exc}") from exc
    if not isinstance(method, Method):
        raise BenchError(f"method '{name}' built a {type(method).__name__}, not a tbps_bench Method")
    method.registered_as = name  # the feature cache keys on it: two plugins never share an entry
    return method.to(device).eval()


def check_method_arguments(name: str, args: dict[str, Any], checkpoint: str | None) -> None:
    """Unknown names and arguments, and a checkpoint the method never reads, stop the command before
    any work. A plugin that fails to import is left to the run, which reports it while the other
    methods complete."""
    METHODS.entry(name)  # an unknown name: did-you-mean, before any work
    try:
        factory = METHODS.load(name)
    except BenchError:
        return
    accepted = accepted_arguments(factory)
    for key in sorted(args):
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            takes = ", ".join(sorted(accepted)) or "none"
            raise BenchError(f"method '{name}' has no argument '{key}'; {hint}it takes: {takes}")
    if checkpoint is not None and not getattr(factory, "reads_checkpoint", True):
        raise BenchError(f"method '{name}' reads no checkpoint; drop --checkpoint {checkpoint}")
    check_method_argument_values(name, factory, args)


@functools.cache
def source_fingerprint(cls: type) -> str:
    """A hash of the source that defines a method: its module's file; for a module inside a package,
    every Python file of that package folder (a model's other modules); for a plugin file, also every
    module it has imported from its own folder (a base class in a sibling file). Editing any of them
    invalidates its cached features."""
    module = sys.modules.get(cls.__module__)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.is_file():
        return "unknown"
    if getattr(module, "__package__", ""):
        root, files = path.parent, sorted(path.parent.glob("*.py"))
    else:
        root = path.resolve().parent
        files = sorted({path.resolve(), *_plugin_modules_under(root)})
    return sha256_json([[str(f.relative_to(root)), sha256_file(f)] for f in files])


#: packages whose source is never part of a plugin's fingerprint (tbps-bench's own)
_OWN_PACKAGES = ("tbps_bench", "tbps_models", "tbps_datasets")


def _plugin_modules_under(folder: Path) -> list[Path]:
    """The source files of imported modules that live in ``folder`` or below it, other than installed
    distributions (a virtual environment inside the folder) and tbps-bench's own packages."""
    environment = Path(sys.prefix).resolve()
    found = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py") or name.split(".")[0] in _OWN_PACKAGES:
            continue
        resolved = Path(file).resolve()
        if resolved.is_relative_to(folder) and not resolved.is_relative_to(environment) and resolved.is_file():
            found.append(resolved)
    return found


def locate_datasets(names: list[str], data_root: str | None, world: World = SINGLE) -> None:
    """Find every dataset before anything is encoded: a misspelt name or a missing ``--data-root``
    stops the command in one line, instead of after the evaluations that come before it."""
    for name in names:
        world.in_turn(lambda name=name: load_dataset(name, data_root))


def load_eval_split(name: str, data_root: str | None, split: str, world: World = SINGLE) -> EvalSplit:
    """One split of a dataset; in a distributed job the processes load it in turn, so that the first
    one prepares the dataset's caches alone."""
    return world.in_turn(lambda: load_dataset(name, data_root).eval_split(split))


@dataclass
class SplitEvaluation:
    retrieval: RetrievalResult
    scoring: Scoring
    timings: dict[str, Any]
    checkpoint_sha: str | None
    #: what the evaluation decided beyond the method's protocol (a shortlist cut to the gallery)
    protocol: dict[str, Any] = field(default_factory=dict)
    #: each query's top-K (``--save-rankings``), the same on every process
    rankings: Rankings | None = None


def shard_unit(options: EvalOptions) -> int:
    """The granularity of sharding: whole encoding batches and whole score tiles, so that every batch
    and every tile is the same computation for any number of processes."""
    return math.lcm(options.batch_size, options.score_tile)


def encode_split(
    method: Method,
    split: EvalSplit,
    options: EvalOptions,
    cache: FeatureCache,
    checkpoint_sha: str | None = None,
    project: bool = True,
    world: World = SINGLE,
) -> tuple[Shard, Shard, dict[str, Any]]:
    """This process's shard of the image and text features of a split, cached per block of
    ``shard_unit`` rows (the same entries for any number of processes).

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
        "amp": options.amp,
        # fp16 entries hold row-scaled values since the scale was introduced: older ones are not served
        "feature_dtype": "fp16-row-scaled" if options.feature_dtype == "fp16" else options.feature_dtype,
    }
    storage = STORAGE_DTYPES[options.feature_dtype]
    unit = shard_unit(options)
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    # the image files' manifest costs stat calls: only a cache that is read or written needs it
    image_key = {**common, "modality": "image", "images": split.image_manifest_sha256() if cache.enabled else None}
    image_ranges = world.shards(len(split.image_paths), unit)
    images, image_hits = _encode_blocks(
        cache,
        image_key,
        image_ranges[world.rank],
        unit,
        lambda rows: encode_images(method, split, options.batch_size, options.amp, options.workers, rows, storage),
        world,
    )
    if frozen and project:
        images = _projected(method.project_images, images, method.device)
    timings["encode_images_s"] = time.perf_counter() - start
    start = time.perf_counter()
    text_ranges = world.shards(len(split.captions), unit)
    texts, text_hits = _encode_blocks(
        cache,
        {**common, "modality": "text", **({"captions": split.caption_sha256} if split.caption_sha256 else {})},
        text_ranges[world.rank],
        unit,
        lambda rows: encode_texts(method, split, options.batch_size, options.amp, rows, storage),
        world,
    )
    if frozen and project:
        texts = _projected(method.project_texts, texts, method.device)
    timings["encode_texts_s"] = time.perf_counter() - start
    timings["cache_hits"] = {"images": image_hits, "texts": text_hits}
    return Shard(images, image_ranges), Shard(texts, text_ranges), timings


def _encode_blocks(
    cache: FeatureCache, key: dict[str, Any], rows: slice, unit: int, encode, world: World
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
    method: Method, split: EvalSplit, options: EvalOptions, cache: FeatureCache, world: World = SINGLE
) -> SplitEvaluation:
    """Encode (or reuse) features and compute both directions, each process on its shards."""
    checkpoint_sha = sha256_path(options.checkpoint) if options.checkpoint else None
    images, texts, timings = encode_split(method, split, options, cache, checkpoint_sha, world=world)
    start = time.perf_counter()
    protocol: dict[str, Any] = {}
    rankings = None
    if options.save_rankings is not None:
        rankings = Rankings.of(options.save_rankings, len(split.captions), len(split.image_paths))
    if isinstance(method, ShortlistMethod):
        retrieval, effective_k = evaluate_shortlisted(
            method,
            world.gather_features(images.features),
            world.gather_features(texts.features),
            split.caption_pids,
            split.image_pids,
            options.amp,
            options.pair_batch,
            world,
            rankings,
        )
        scoring = Scoring.SHORTLIST
        timings["pairwise_scoring_s"] = time.perf_counter() - start  # first stage, pairs and ranking
        protocol = {"shortlist_k_effective": effective_k, "pair_batch": options.pair_batch}
    elif isinstance(method, PairwiseMethod):
        retrieval = _evaluate_pairwise(method, split, images, texts, options.score_tile, world, timings, rankings)
        scoring = Scoring.PAIRWISE
    else:
        text_embeddings, image_embeddings = _embeddings(method, texts, images)
        score = cosine_scorer(options.score_tile)
        retrieval = evaluate_sharded(
            Shard.of_embeddings(text_embeddings, texts.ranges),
            Shard.of_embeddings(image_embeddings, images.ranges),
            split.caption_pids,
            split.image_pids,
            score,
            world,
            rankings=rankings,
        )
        scoring = Scoring.COSINE
    timings["metrics_s"] = time.perf_counter() - start
    merged = rankings.merged(world) if rankings is not None else None
    return SplitEvaluation(retrieval, scoring, timings, checkpoint_sha, protocol, merged)


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
    timings: dict[str, Any],
    rankings: Rankings | None = None,
) -> RetrievalResult:
    """Pairwise scores tile by tile when a pair's score needs nothing else (each process scores its
    shard, each pair once for both directions); otherwise the whole matrix at once, in every
    process."""
    start = time.perf_counter()
    if not method.scores_blockwise:
        images_all, texts_all = (in_float32(world.gather_features(f.features)) for f in (images, texts))
        scores = method.score_all(images_all, texts_all)
        timings["pairwise_scoring_s"] = time.perf_counter() - start
        return evaluate_scores(scores, split.caption_pids, split.image_pids, rankings=rankings)

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
    timings["pairwise_scoring_s"] = time.perf_counter() - start  # scoring and ranking, interleaved
    return retrieval


def run_eval(
    method_name: str, dataset_name: str, options: EvalOptions, argv: list[str] | None = None, world: World = SINGLE
) -> list[Path]:
    """Evaluate one method on one dataset; write and return the result file(s) (the first process
    writes them; the others return an empty list)."""
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    split = load_eval_split(dataset_name, options.data_root, options.split, world).limited(options.limit)
    method = build_method(method_name, device, options.checkpoint, options.method_args)
    method.for_dataset(split.dataset)
    cache = FeatureCache(enabled=options.use_cache)
    subsets = [split]
    if split.image_sources:
        for source in sorted(set(split.image_sources)):
            mask = torch.tensor([s == source for s in split.image_sources])
            subsets.append(split.subset_images(mask, source))
    paths = []
    run_id = new_run_id()
    distributed = describe(world, device)
    for part in subsets:
        evaluation = evaluate_split(method, part, options, cache, world)
        # captions the method's tokenizer had to cut (None: its tokenizer does not report it)
        truncated = count_truncated(method, part.captions, options.batch_size)
        if truncated and world.is_main:
            print(
                f"note: {truncated} of {len(part.captions)} {part.dataset}/{part.split} captions are longer "
                f"than what method '{method.name}' reads (recorded as protocol.truncated_captions)",
                file=sys.stderr,
            )
        if world.is_main:
            paths.append(
                _write(method, method_name, part, evaluation, truncated, options, device, run_id, argv, distributed)
            )
    return paths


def _write(
    method: Method,
    method_name: str,
    split: EvalSplit,
    evaluation: SplitEvaluation,
    truncated_captions: int | None,
    options: EvalOptions,
    device: torch.device,
    run_id: str,
    argv: list[str] | None,
    distributed: dict[str, Any],
) -> Path:
    timings, checkpoint_sha = evaluation.timings, evaluation.checkpoint_sha
    encode_total = timings["encode_images_s"] + timings["encode_texts_s"]
    timings["throughput"] = {
        "images_per_s": len(split.image_paths) / max(timings["encode_images_s"], 1e-9),
        "captions_per_s": len(split.captions) / max(timings["encode_texts_s"], 1e-9),
    }
    timings["total_s"] = encode_total + timings.get("pairwise_scoring_s", 0.0) + timings["metrics_s"]
    entry = METHODS.entry(method_name)
    result = build_result(
        run_id=run_id,
        method={
            "name": method_name,
            "origin": entry.origin,
            "arguments": method.arguments(),
            "checkpoint": {"file": _checkpoint_label(options.checkpoint), "sha256": checkpoint_sha}
            if checkpoint_sha
            else None,
            "preprocessing": method.preprocessing(),
            "trained_on": (method.training_record or {}).get("dataset") or method.trained_on,
            "training": method.training_record,
        },
        dataset={
            "name": split.dataset,
            "split": split.split,
            "annotation_sha256": split.annotation_sha256,
            "counts": split.counts(),
            "limit": split.limit,
        },
        retrieval=evaluation.retrieval,
        scoring=evaluation.scoring,
        timings=timings,
        provenance={**provenance(device, options.seed, argv), "distributed": distributed},
        partial=split.limit is not None,
        protocol_extra={
            "amp": options.amp,
            "batch_size": options.batch_size,
            "score_tile": options.score_tile,
            "feature_dtype": options.feature_dtype,
            "truncated_captions": truncated_captions,
            **method.protocol(),
            **evaluation.protocol,
        },
    )
    if evaluation.rankings is not None:  # written first: the result names it and its hash
        path = rankings_path(result_path(options.out_dir, result))
        write_rankings(path, evaluation.rankings, ranked_items(split))
        result["rankings"] = {"file": path.name, "sha256": sha256_file(path), "k": evaluation.rankings.k}
    return write_result(options.out_dir, result)


def _checkpoint_label(path: str) -> str:
    """The file name, or for a checkpoint folder its last parts (run folders end in best/last)."""
    parts = Path(path).resolve().parts
    return "/".join(parts[-3:]) if Path(path).is_dir() else parts[-1]
