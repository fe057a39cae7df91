"""The evaluation harness: one (method, dataset) pair in, one result file per evaluated part out."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from tbps_bench.adapters import DatasetAdapter, evaluation_parts, load_dataset
from tbps_bench.arguments import accepted_arguments, check_method_argument_values
from tbps_bench.cache import FeatureCache
from tbps_bench.distributed import SINGLE, World, describe
from tbps_bench.errors import BenchError
from tbps_bench.evaluation import EvalSettings, SplitEvaluation, evaluate_split
from tbps_bench.fileio import sha256_file, sha256_path
from tbps_bench.methods import Method
from tbps_bench.metrics import SCORE_TILE
from tbps_bench.options import Amp, FeatureStorage, parsed
from tbps_bench.provenance import provenance
from tbps_bench.rankings import ranked_items, rankings_path, write_rankings
from tbps_bench.registry import METHODS
from tbps_bench.results import build_result, new_run_id, result_path, write_result
from tbps_bench.shortlist import PAIR_BATCH
from tbps_bench.splits import EvalSplit


@dataclass
class EvalOptions:
    """What ``tbps-bench eval`` is asked (the Python API takes the same record)."""

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

    def settings(self) -> EvalSettings:
        """How each split is encoded and scored (the options of the same names)."""
        return EvalSettings(**{setting.name: getattr(self, setting.name) for setting in fields(EvalSettings)})


@dataclass(frozen=True)
class Run:
    """What every result file of one ``run_eval`` call shares."""

    method_name: str
    run_id: str
    options: EvalOptions
    device: torch.device
    checkpoint_sha: str | None
    argv: list[str] | None
    distributed: dict[str, Any]


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


def locate_datasets(names: list[str], data_root: str | None, world: World = SINGLE) -> None:
    """Find every dataset before anything is encoded: a misspelt name or a missing ``--data-root``
    stops the command in one line, instead of after the evaluations that come before it."""
    for name in names:
        world.in_turn(lambda name=name: load_dataset(name, data_root))


def load_eval_split(name: str, data_root: str | None, split: str, world: World = SINGLE) -> EvalSplit:
    """One split of a dataset; in a distributed job the processes load it in turn, so that the first
    one prepares the dataset's caches alone."""
    return _adapter_and_split(name, data_root, split, world)[1]


def _adapter_and_split(name: str, data_root: str | None, split: str, world: World) -> tuple[DatasetAdapter, EvalSplit]:
    def load() -> tuple[DatasetAdapter, EvalSplit]:
        adapter = load_dataset(name, data_root)
        return adapter, adapter.eval_split(split)

    return world.in_turn(load)


def run_eval(
    method_name: str, dataset_name: str, options: EvalOptions, argv: list[str] | None = None, world: World = SINGLE
) -> list[Path]:
    """Evaluate one method on one dataset: the split, then each part the dataset's adapter reports
    on its own (UFine3C's sources). Writes and returns the result files (the first process writes
    them; the others return an empty list)."""
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    adapter, split = _adapter_and_split(dataset_name, options.data_root, options.split, world)
    split = split.limited(options.limit)
    method = build_method(method_name, device, options.checkpoint, options.method_args)
    method.for_dataset(split.dataset)
    cache = FeatureCache(enabled=options.use_cache)
    checkpoint_sha = sha256_path(options.checkpoint) if options.checkpoint else None
    run = Run(method_name, new_run_id(), options, device, checkpoint_sha, argv, describe(world, device))
    paths = []
    for part in evaluation_parts(adapter, split):
        evaluation = evaluate_split(
            method, part, options.settings(), cache, world, checkpoint_sha, rankings_k=options.save_rankings
        )
        if evaluation.truncated_captions and world.is_main:
            print(
                f"note: {evaluation.truncated_captions} of {len(part.captions)} {part.dataset}/{part.split} captions "
                f"are longer than what method '{method.name}' reads (recorded as protocol.truncated_captions)",
                file=sys.stderr,
            )
        if world.is_main:
            paths.append(_write(run, method, part, evaluation))
    return paths


def _write(run: Run, method: Method, split: EvalSplit, evaluation: SplitEvaluation) -> Path:
    options = run.options
    entry = METHODS.entry(run.method_name)
    result = build_result(
        run_id=run.run_id,
        method={
            "name": run.method_name,
            "origin": entry.origin,
            "arguments": method.arguments(),
            "checkpoint": {"file": _checkpoint_label(options.checkpoint), "sha256": run.checkpoint_sha}
            if run.checkpoint_sha
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
        timings=evaluation.timings.as_record(len(split.image_paths), len(split.captions)),
        provenance={**provenance(run.device, options.seed, run.argv), "distributed": run.distributed},
        partial=split.limit is not None,
        protocol_extra={
            "amp": options.amp,
            "batch_size": options.batch_size,
            "score_tile": options.score_tile,
            "feature_dtype": options.feature_dtype,
            "truncated_captions": evaluation.truncated_captions,
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
