"""The evaluation harness: one (method, dataset) pair in, one result file out."""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tbps_bench.adapters import load_dataset
from tbps_bench.encoding import FeatureCache, count_truncated, encode_images, encode_texts
from tbps_bench.errors import BenchError
from tbps_bench.fileio import sha256_file, sha256_json, sha256_path
from tbps_bench.methods import EMBEDDING, Features, FrozenBackbone, Method, PairwiseMethod, as_features
from tbps_bench.metrics import RetrievalResult, evaluate_embeddings, evaluate_scores
from tbps_bench.provenance import provenance
from tbps_bench.registry import METHODS
from tbps_bench.results import build_result, new_run_id, write_result
from tbps_bench.splits import EvalSplit


@dataclass
class EvalOptions:
    data_root: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    amp: str = "none"
    limit: int | None = None
    out_dir: str = "results"
    split: str = "test"
    seed: int = 0
    method_args: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True
    workers: int = 0


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


def accepted_arguments(factory: Any) -> set[str]:
    """The ``--method-arg`` names a method takes: the named parameters of its ``__init__`` chain (or of
    a factory function). The base ``Method``'s catch-all is not an argument of any method."""
    functions = (
        [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__ and c not in (Method, object)]
        if isinstance(factory, type)
        else [factory]
    )
    names = set()
    for function in functions:
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                names.add(parameter.name)
    return names - {"self", "device", "checkpoint"}


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


@functools.cache
def source_fingerprint(cls: type) -> str:
    """A hash of the source that defines a method: its module's file, and for a module inside a
    package every Python file of that package folder (a model's other modules). Editing a plugin
    therefore invalidates its cached features."""
    module = sys.modules.get(cls.__module__)
    path = Path(getattr(module, "__file__", "") or "")
    if not path.is_file():
        return "unknown"
    files = sorted(path.parent.glob("*.py")) if getattr(module, "__package__", "") else [path]
    return sha256_json([[f.name, sha256_file(f)] for f in files])


def load_eval_split(name: str, data_root: str | None, split: str) -> EvalSplit:
    return load_dataset(name, data_root).eval_split(split)


@dataclass
class SplitEvaluation:
    retrieval: RetrievalResult
    scoring: str  # "cosine" or "pairwise"
    timings: dict[str, Any]
    checkpoint_sha: str | None


def encode_split(
    method: Method,
    split: EvalSplit,
    options: EvalOptions,
    cache: FeatureCache,
    checkpoint_sha: str | None = None,
    project: bool = True,
) -> tuple[Features, Features, dict[str, Any]]:
    """Image and text features of a split, from the cache when the same encoding was done before.

    For a method with a frozen backbone, what is cached is the backbone's output (independent of
    the checkpoint) and the trained projection is applied afterwards (unless ``project`` is False:
    training reads the backbone features themselves)."""
    frozen = isinstance(method, FrozenBackbone)
    common = {
        "method": getattr(method, "registered_as", method.name),
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
    }
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    image_features, image_hit = cache.get_or_compute(
        # the image files' manifest costs stat calls: only a cache that is read or written needs it
        {**common, "modality": "image", "images": split.image_manifest_sha256() if cache.enabled else None},
        lambda: encode_images(method, split, options.batch_size, options.amp, options.workers),
    )
    if frozen and project:
        image_features = _projected(method.project_images, image_features, method.device)
    timings["encode_images_s"] = time.perf_counter() - start
    start = time.perf_counter()
    text_features, text_hit = cache.get_or_compute(
        {**common, "modality": "text"}, lambda: encode_texts(method, split, options.batch_size, options.amp)
    )
    if frozen and project:
        text_features = _projected(method.project_texts, text_features, method.device)
    timings["encode_texts_s"] = time.perf_counter() - start
    timings["cache_hits"] = {"images": image_hit, "texts": text_hit}
    return image_features, text_features, timings


def _projected(project, features: Features, device: torch.device) -> Features:
    with torch.inference_mode():
        out = as_features(project({k: v.to(device) for k, v in features.items()}))
    return {k: v.float().cpu() for k, v in out.items()}


def evaluate_split(method: Method, split: EvalSplit, options: EvalOptions, cache: FeatureCache) -> SplitEvaluation:
    """Encode (or reuse) features and compute both directions."""
    checkpoint_sha = sha256_path(options.checkpoint) if options.checkpoint else None
    image_features, text_features, timings = encode_split(method, split, options, cache, checkpoint_sha)
    start = time.perf_counter()
    if isinstance(method, PairwiseMethod):
        scores = method.score_all(image_features, text_features)
        timings["pairwise_scoring_s"] = time.perf_counter() - start
        start = time.perf_counter()
        retrieval = evaluate_scores(scores, split.caption_pids, split.image_pids)
        scoring = "pairwise"
    else:
        if EMBEDDING not in image_features or EMBEDDING not in text_features:
            raise BenchError(
                f"method '{method.name}' returned features {sorted(image_features)} / {sorted(text_features)}; a "
                f"dual encoder returns one embedding tensor (a PairwiseMethod scores feature dicts)"
            )
        image_features, text_features = image_features[EMBEDDING], text_features[EMBEDDING]
        if image_features.dim() != 2 or text_features.dim() != 2 or image_features.shape[1] != text_features.shape[1]:
            raise BenchError(
                f"method '{method.name}' returned image features {tuple(image_features.shape)} and text "
                f"features {tuple(text_features.shape)}; expected (n, d) with the same d"
            )
        retrieval = evaluate_embeddings(
            text_features.to(method.device),
            image_features.to(method.device),
            split.caption_pids,
            split.image_pids,
            normalize=True,
        )
        scoring = "cosine"
    timings["metrics_s"] = time.perf_counter() - start
    return SplitEvaluation(retrieval, scoring, timings, checkpoint_sha)


def run_eval(method_name: str, dataset_name: str, options: EvalOptions, argv: list[str] | None = None) -> list[Path]:
    """Evaluate one method on one dataset; write and return the result file(s)."""
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    split = load_eval_split(dataset_name, options.data_root, options.split).limited(options.limit)
    method = build_method(method_name, device, options.checkpoint, options.method_args)
    cache = FeatureCache(enabled=options.use_cache)
    subsets = [split]
    if split.image_sources:
        for source in sorted(set(split.image_sources)):
            mask = torch.tensor([s == source for s in split.image_sources])
            subsets.append(split.subset_images(mask, source))
    paths = []
    run_id = new_run_id()
    for part in subsets:
        evaluation = evaluate_split(method, part, options, cache)
        # captions the method's tokenizer had to cut (None: its tokenizer does not report it)
        truncated = count_truncated(method, part.captions, options.batch_size)
        if truncated:
            print(
                f"note: {truncated} of {len(part.captions)} {part.dataset}/{part.split} captions are longer "
                f"than what method '{method.name}' reads (recorded as protocol.truncated_captions)",
                file=sys.stderr,
            )
        paths.append(_write(method, method_name, part, evaluation, truncated, options, device, run_id, argv))
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
        provenance=provenance(device, options.seed, argv),
        partial=split.limit is not None,
        protocol_extra={
            "amp": options.amp,
            "batch_size": options.batch_size,
            "truncated_captions": truncated_captions,
            **method.protocol(),
        },
    )
    return write_result(options.out_dir, result)


def _checkpoint_label(path: str) -> str:
    """The file name, or for a checkpoint folder its last parts (run folders end in best/last)."""
    parts = Path(path).resolve().parts
    return "/".join(parts[-3:]) if Path(path).is_dir() else parts[-1]
