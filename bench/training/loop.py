"""The training loop, one function per step: set up, then per epoch train, select, checkpoint."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tbps_bench.cache import FeatureCache
from tbps_bench.distributed import SINGLE, World, batch_gatherer, data_parallel, with_global_batch_norm
from tbps_bench.encoding import autocast, progress
from tbps_bench.errors import BenchError
from tbps_bench.evaluation import EvalSettings, encode_split, evaluate_split
from tbps_bench.features import Features, feature_rows
from tbps_bench.fileio import linked_copy_dir, write_json_atomic
from tbps_bench.harness import build_method, load_eval_split, resolve_device
from tbps_bench.methods import FrozenBackbone, Trainable
from tbps_bench.options import SelectOn
from tbps_bench.splits import EvalSplit
from tbps_bench.training.data import CaptionPairs, global_batches
from tbps_bench.training.options import TrainOptions, run_folder
from tbps_bench.training.resume import Progress, resumable, save_resume, start_or_resume
from tbps_bench.training.schedule import learning_rate_factor, merged_schedule

#: items per encoding batch of the frozen backbone's train features and of the selection pass
#: (inference only: the training batch is the schedule's)
ENCODE_BATCH = 64


@dataclass(frozen=True)
class TrainingData:
    train: EvalSplit
    #: the split that picks the best epoch (None: ``--select-on last``)
    selection: EvalSplit | None
    #: each caption's contiguous identity label
    labels: torch.Tensor
    classes: int


@dataclass(frozen=True)
class TrainingRun:
    """The parts of one training run that its steps share."""

    method: Trainable
    #: the method's loss function, through DistributedDataParallel in a distributed run
    losses_of: Callable[[dict[str, Any]], dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    folder: Path
    #: what a resumed run must share with this one (stored in the resume file)
    resumable: dict[str, Any]
    #: a frozen backbone's train-split features (FrozenBackbone methods)
    frozen_features: dict[str, Features] | None
    options: TrainOptions
    world: World


def train(
    method_name: str,
    dataset_name: str,
    options: TrainOptions,
    argv: list[str] | None = None,
    world: World = SINGLE,
) -> Path:
    """Train ``method_name`` on the train split of ``dataset_name``; returns the selected checkpoint.

    With several processes each takes its slice of every global batch, the batch-level losses see
    the global batch, gradients are averaged (DistributedDataParallel) and BatchNorm statistics are
    global: the update equals one process's on the same global batch. The first process writes
    checkpoints and the log."""
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    method = build_method(method_name, device, None, options.method_args)
    if not isinstance(method, Trainable):
        raise BenchError(f"method '{method_name}' cannot be trained (it is not a tbps_bench Trainable)")
    schedule = merged_schedule(method.default_training_config(), options.epochs)
    data = _training_data(dataset_name, options, world)
    method.prepare_training(data.classes, schedule, data.train)
    method.network = with_global_batch_norm(method.network, world)
    settings = EvalSettings(batch_size=ENCODE_BATCH, amp=options.amp, workers=options.workers)
    frozen_features = _frozen_train_features(method, data.train, settings, options.use_cache, world)
    # fused: one pass over each parameter instead of a dozen elementwise kernels (a quarter of the
    # step time on a CPU; docs/benchmarks.md, "Measured reasons")
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(method.parameter_groups(schedule), betas=(0.9, 0.999), eps=1e-8, fused=fused)
    _freeze_all_but(method.network, optimizer, method_name)
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp == "fp16")
    record_base = {
        "dataset": dataset_name,
        "annotation_sha256": data.train.annotation_sha256,
        "selected_on": options.select_on,
        "selection_metric": "t2i R1" if options.select_on is not SelectOn.LAST else None,
        "schedule": schedule,
        "seed": options.seed,
        "max_steps_per_epoch": options.max_steps_per_epoch,
        "optimizer": {"name": "Adam", "fused": fused},
        "method_arguments": method.arguments(),
    }
    folder = run_folder(options, method_name, dataset_name)
    same_run = resumable(record_base, options)
    state = start_or_resume(folder, method, method_name, optimizer, scaler, same_run, options, world)
    losses_of = data_parallel(method.network, method.training_losses, world, device)  # broadcasts the state
    run = TrainingRun(method, losses_of, optimizer, scaler, folder, same_run, frozen_features, options, world)
    transform = method.train_image_transform() if frozen_features is None else None
    pairs = CaptionPairs(data.train, transform, data.labels, options.seed)
    if world.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    for epoch in range(schedule["epochs"]):
        started = time.perf_counter()
        order = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
        batches = global_batches(len(pairs), schedule["batch_size"], order)
        mine = [batch[world.shard(len(batch), 1)] for batch in batches]  # this process's slice
        if options.max_steps_per_epoch is not None:
            mine = mine[: options.max_steps_per_epoch]
        # announced for every epoch in order, also those a resumed run skips: what a method builds
        # from them (a frozen encoder's outputs, encoded in chunks) is then the straight run's, bit for bit
        method.prepare_epoch([data.train.captions[index] for batch in mine for index in batch])
        if epoch < state.epochs_done:
            continue
        factor = learning_rate_factor(epoch, schedule)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        pairs.epoch = epoch
        losses = _train_epoch(run, pairs, mine)
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr_factor": factor, "losses": losses}
        score = None
        if data.selection is not None:
            entry[options.select_on] = _selection_metrics(run, data.selection, settings)
            score = entry[options.select_on]["t2i"]["R1"]
        entry["seconds"] = time.perf_counter() - started
        improved = score is None or score > state.best["R1"]  # --select-on last: every epoch replaces the one before
        if improved:
            state = Progress(epoch + 1, {"epoch": epoch + 1, "R1": score if score is not None else -1.0})
        else:
            state = Progress(epoch + 1, state.best)
        if world.is_main:
            _checkpoint(run, {**record_base, "epoch": epoch + 1, "epochs": schedule["epochs"]}, state, improved, entry)
            _report(entry, options.select_on, state.best, schedule["epochs"])
        world.barrier()  # the next epoch (or the caller) sees this epoch's files
    best = state.best if options.select_on != "last" else {"epoch": state.best["epoch"], "R1": None}
    summary = {"method": method_name, "dataset": dataset_name, "best": best, "folder": str(folder), "argv": argv}
    if world.is_main:
        write_json_atomic(folder / "train.json", {**summary, "world_size": world.size})
    return folder / "best"


def _training_data(dataset_name: str, options: TrainOptions, world: World) -> TrainingData:
    train_split = load_eval_split(dataset_name, options.data_root, "train", world)
    selection = None
    if options.select_on is not SelectOn.LAST:
        try:
            selection = load_eval_split(dataset_name, options.data_root, options.select_on, world)
        except BenchError as exc:
            raise BenchError(
                f"{exc}; choose the checkpoint with --select-on last (the final epoch) or --select-on test "
                "(recorded in every result)"
            ) from exc
    pids = sorted(set(train_split.caption_pids.tolist()))
    label_of = {pid: label for label, pid in enumerate(pids)}
    labels = torch.tensor([label_of[p] for p in train_split.caption_pids.tolist()])
    return TrainingData(train_split, selection, labels, len(pids))


def _frozen_train_features(
    method: Trainable, split: EvalSplit, settings: EvalSettings, use_cache: bool, world: World
) -> dict[str, Features] | None:
    """A frozen backbone never changes: its train-split features are encoded (or read from the
    cache) once, whole on every process."""
    if not isinstance(method, FrozenBackbone):
        return None
    encoded = encode_split(method, split, settings, FeatureCache(enabled=use_cache), project=False, world=world)
    return {
        "image": world.gather_features(encoded.images.features),
        "text": world.gather_features(encoded.texts.features),
    }


def _freeze_all_but(network: torch.nn.Module, optimizer: torch.optim.Optimizer, method_name: str) -> None:
    """Parameters the optimizer does not hold need no gradient (nor its average over processes);
    one it holds outside ``network`` would never be averaged, and is refused."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    inside = {id(p) for p in network.parameters()}
    if not held <= inside:
        raise BenchError(
            f"method '{method_name}': parameter_groups returned parameters outside its network; every trained "
            "parameter must live in method.network"
        )
    for parameter in network.parameters():
        if id(parameter) not in held:
            parameter.requires_grad_(False)


def _train_epoch(run: TrainingRun, pairs: CaptionPairs, batches: list[list[int]]) -> dict[str, float]:
    """One epoch of optimizer steps over this process's slices ``batches``; the mean of each loss term."""
    method, frozen_features = run.method, run.frozen_features
    device = method.device
    gather = batch_gatherer(run.world)
    loader = torch.utils.data.DataLoader(pairs, batch_sampler=batches, num_workers=run.options.workers)
    method.train()
    totals: dict[str, float] = {}
    steps = 0
    for batch in progress(loader, len(loader), f"epoch {pairs.epoch + 1}"):
        tokens = {k: v.to(device) for k, v in method.tokenize(batch["caption"]).items()}
        inputs = {
            "tokens": tokens,
            "captions": batch["caption"],
            "labels": batch["label"].to(device),
            "caption_index": batch["caption_index"],
            "image_index": batch["image_index"],
            "gather": gather,
        }
        if "pixels" in batch:
            inputs["pixels"] = batch["pixels"].to(device)
        if frozen_features is not None:
            inputs["image_features"] = feature_rows(frozen_features["image"], batch["image_index"], device)
            inputs["text_features"] = feature_rows(frozen_features["text"], batch["caption_index"], device)
        with autocast(device, run.options.amp):
            losses = run.losses_of(inputs)
        total = losses["total"]
        if not torch.isfinite(total):
            raise BenchError(f"training diverged at epoch {pairs.epoch + 1}, step {steps + 1}: loss {float(total)}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(total).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        steps += 1
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
    method.eval()
    return {k: v / max(steps, 1) for k, v in totals.items()}


def _selection_metrics(run: TrainingRun, split: EvalSplit, settings: EvalSettings) -> dict[str, Any]:
    """The selection split's metrics after an epoch. Features change every epoch, except those of a
    frozen backbone (cached without the weights)."""
    cache = FeatureCache(enabled=run.frozen_features is not None and run.options.use_cache)
    return evaluate_split(run.method, split, settings, cache, run.world).retrieval.summary()


def _checkpoint(
    run: TrainingRun, record: dict[str, Any], state: Progress, improved: bool, entry: dict[str, Any]
) -> None:
    """The epoch's files: ``last/``, ``best/`` when it improved, the resume file and the log line."""
    run.method.save_checkpoint(run.folder / "last", record)
    if improved:
        linked_copy_dir(run.folder / "last", run.folder / "best")  # hard links: the weights are not written twice
    save_resume(run.folder / "resume.pt", run.method, run.optimizer, run.scaler, state, run.resumable)
    with open(run.folder / "log.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps(entry, allow_nan=False) + "\n")


def _report(entry: dict[str, Any], select_on: str, best: dict[str, Any], epochs: int) -> None:
    loss = entry["losses"].get("total", math.nan)
    line = f"epoch {entry['epoch']}/{epochs}  loss {loss:.3f}"
    if select_on in entry:
        line += f"  {select_on} t2i R@1 {entry[select_on]['t2i']['R1']:.2f} (best {best['R1']:.2f} @ {best['epoch']})"
    print(f"{line}  {entry['seconds']:.0f} s", file=sys.stderr)
