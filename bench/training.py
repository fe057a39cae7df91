"""The one training loop: every trainable method plugs in through the ``Trainable`` hooks.

It owns data order, optimisation, the learning-rate schedule, mixed precision, per-epoch
checkpoints with exact resume, and checkpoint selection on the validation split.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tbps_bench.checkpoints import load_state
from tbps_bench.distributed import (
    SINGLE,
    World,
    average_gradients,
    batch_gatherer,
    broadcast_state,
    synchronise_batch_norm,
)
from tbps_bench.encoding import FeatureCache, autocast, progress, read_image
from tbps_bench.errors import BenchError
from tbps_bench.features import feature_rows
from tbps_bench.fileio import atomic_path, linked_copy_dir, write_json_atomic
from tbps_bench.harness import (
    EvalOptions,
    build_method,
    encode_split,
    evaluate_split,
    load_eval_split,
    resolve_device,
)
from tbps_bench.methods import FrozenBackbone, Trainable
from tbps_bench.options import Amp, SelectOn, parsed
from tbps_bench.splits import EvalSplit

SCHEDULE_KEYS = {
    "epochs",
    "batch_size",
    "lr",
    "backbone_lr_factor",
    "backbone_weight_decay",
    "warmup_epochs",
    "warmup_factor",
    "milestones",
    "gamma",
}


#: what a run leaves in its folder besides ``resume.pt``
RUN_FILES = ("best", "last", "log.jsonl")


#: items per encoding batch of the frozen backbone's train features and of the selection pass
#: (inference only: the training batch is the schedule's)
ENCODE_BATCH = 64


@dataclass
class TrainOptions:
    data_root: str | None = None
    out_dir: str = "runs"
    device: str = "auto"
    amp: Amp = Amp.NONE
    resume: bool = False
    #: replace a run (best/, last/, log) found in the folder without its resume file
    overwrite: bool = False
    select_on: SelectOn = SelectOn.VAL
    seed: int = 0
    workers: int = 0
    epochs: int | None = None
    #: stop each epoch after this many batches (smoke runs); recorded in the checkpoint
    max_steps_per_epoch: int | None = None
    #: cache the frozen backbone's train-split features (FrozenBackbone methods)
    use_cache: bool = True
    method_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # strings from Python callers become the option types, or one line
        self.amp = parsed(Amp, self.amp, "amp")
        self.select_on = parsed(SelectOn, self.select_on, "--select-on")


def learning_rate_factor(epoch: int, schedule: dict[str, Any]) -> float:
    """Linear warm-up from ``warmup_factor``, then x``gamma`` at each milestone (epochs from 0)."""
    if epoch < schedule["warmup_epochs"]:
        fraction = epoch / schedule["warmup_epochs"]
        return schedule["warmup_factor"] + (1.0 - schedule["warmup_factor"]) * fraction
    return schedule["gamma"] ** sum(epoch >= m for m in schedule["milestones"])


class _CaptionPairs(torch.utils.data.Dataset):
    """One training item per caption: its image, the caption and the contiguous identity label.

    An item's random augmentation is drawn from its own seed (run seed, epoch, caption index), so
    an item looks the same whichever process or loader worker reads it."""

    def __init__(self, split: EvalSplit, transform, labels: torch.Tensor, seed: int):
        self.split, self.transform, self.labels = split, transform, labels  # transform None: no pixels
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = int(self.split.caption_image[index])
        item = {
            "caption": self.split.captions[index],
            "label": int(self.labels[index]),
            "caption_index": index,
            "image_index": image_index,
        }
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a formatted
                # stack trace per call when CUDA is not initialised (a cost per item, and a growing queue)
                torch.random.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
                item["pixels"] = read_image(self.split, image_index, self.transform)
        return item


def global_batches(count: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """The epoch's batches of item indices: a permutation cut into ``batch_size`` pieces, the last
    dropped when incomplete (unless it is the only one)."""
    order = torch.randperm(count, generator=generator).tolist()
    stop = count if count <= batch_size else count - count % batch_size
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


def _merge_schedule(method: Trainable, options: TrainOptions) -> dict[str, Any]:
    schedule = method.default_training_config()
    if options.epochs is not None:
        schedule["epochs"] = options.epochs
    unknown = sorted(set(schedule) - SCHEDULE_KEYS)
    if unknown:
        raise BenchError(f"unknown training settings {unknown}; known: {sorted(SCHEDULE_KEYS)}")
    if schedule["epochs"] < 1 or schedule["batch_size"] < 2:
        raise BenchError(f"training needs epochs >= 1 and batch_size >= 2; got {schedule}")
    return schedule


def run_folder(options: TrainOptions, method_name: str, dataset: str) -> Path:
    return Path(options.out_dir) / method_name / dataset / f"seed{options.seed}"


def train(
    method_name: str,
    dataset_name: str,
    options: TrainOptions,
    argv: list[str] | None = None,
    world: World = SINGLE,
) -> Path:
    """Train ``method_name`` on the train split of ``dataset_name``; returns the selected checkpoint.

    With several processes each takes its slice of every global batch, the batch-level losses see
    the global batch, gradients are averaged and BatchNorm statistics are global: the update equals
    one process's on the same global batch. The first process writes checkpoints and the log."""
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)
    method = build_method(method_name, device, None, options.method_args)
    if not isinstance(method, Trainable):
        raise BenchError(f"method '{method_name}' cannot be trained (it is not a tbps_bench Trainable)")
    schedule = _merge_schedule(method, options)
    train_split = load_eval_split(dataset_name, options.data_root, "train", world)
    select_split = None
    if options.select_on is not SelectOn.LAST:
        try:
            select_split = load_eval_split(dataset_name, options.data_root, options.select_on, world)
        except BenchError as exc:
            raise BenchError(
                f"{exc}; choose the checkpoint with --select-on last (the final epoch) or --select-on test "
                "(recorded in every result)"
            ) from exc
    pids = sorted(set(train_split.caption_pids.tolist()))
    label_of = {pid: label for label, pid in enumerate(pids)}
    labels = torch.tensor([label_of[p] for p in train_split.caption_pids.tolist()])
    method.prepare_training(len(pids), schedule, train_split)
    synchronise_batch_norm(method.network, world)
    frozen_features = None
    if isinstance(method, FrozenBackbone):
        # the backbone never changes: its train-split features are encoded (or read from the cache) once
        encode_options = EvalOptions(batch_size=ENCODE_BATCH, amp=options.amp, workers=options.workers)
        cache = FeatureCache(enabled=options.use_cache)
        images, texts, _ = encode_split(method, train_split, encode_options, cache, project=False, world=world)
        frozen_features = {
            "image": world.gather_features(images.features),
            "text": world.gather_features(texts.features),
        }
    # fused: one pass over each parameter instead of a dozen elementwise kernels (a quarter of the
    # step time on a CPU; docs/benchmarks.md, "Measured reasons")
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(method.parameter_groups(schedule), betas=(0.9, 0.999), eps=1e-8, fused=fused)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp == "fp16")
    record_base = {
        "dataset": dataset_name,
        "annotation_sha256": train_split.annotation_sha256,
        "selected_on": options.select_on,
        "selection_metric": "t2i R1" if options.select_on is not SelectOn.LAST else None,
        "schedule": schedule,
        "seed": options.seed,
        "max_steps_per_epoch": options.max_steps_per_epoch,
        "optimizer": {"name": "Adam", "fused": fused},
        "method_arguments": method.arguments(),
    }
    folder = run_folder(options, method_name, dataset_name)
    resume_file = folder / "resume.pt"
    start_epoch, best = 0, {"epoch": None, "R1": -1.0}
    if options.resume:
        if not resume_file.is_file():
            raise BenchError(f"--resume: no {resume_file} to resume from; start without --resume")
        state = _read_resume(resume_file)
        _check_same_run(state.get("run"), _resumable(record_base, options), resume_file)
        load_state(method.trained_modules(), state["method"], str(resume_file), method_name)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise BenchError(f"{resume_file}: the optimizer state does not fit this run ({exc})") from exc
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_epoch, best = int(state["epoch"]), state["best"]
        print(f"resumed {folder} at epoch {start_epoch}", file=sys.stderr)
    elif resume_file.exists():
        raise BenchError(f"{folder} already holds a training run; pass --resume to continue it or use another --out")
    elif not options.overwrite and any((folder / name).exists() for name in RUN_FILES):
        found = ", ".join(name for name in RUN_FILES if (folder / name).exists())
        raise BenchError(
            f"{folder} holds a finished or partial run ({found}) without its resume file; pass another --out, "
            "or --overwrite to replace it"
        )
    elif options.overwrite and world.is_main:
        (folder / "log.jsonl").unlink(missing_ok=True)  # best/ and last/ are replaced whole by the run
    broadcast_state(method.network, world)
    transform = method.train_image_transform() if frozen_features is None else None
    pairs = _CaptionPairs(train_split, transform, labels, options.seed)
    log_file = folder / "log.jsonl"
    if world.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    gather = batch_gatherer(world)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for epoch in range(schedule["epochs"]):
        started = time.perf_counter()
        order = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
        batches = global_batches(len(pairs), schedule["batch_size"], order)
        mine = [batch[world.shard(len(batch), 1)] for batch in batches]  # this process's slice
        read = mine if options.max_steps_per_epoch is None else mine[: options.max_steps_per_epoch]
        # announced for every epoch in order, also those a resumed run skips: what a method builds
        # from them (a frozen encoder's outputs, encoded in chunks) is then the straight run's, bit for bit
        method.prepare_epoch([train_split.captions[index] for batch in read for index in batch])
        if epoch < start_epoch:
            continue
        factor = learning_rate_factor(epoch, schedule)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        pairs.epoch = epoch
        loader = torch.utils.data.DataLoader(pairs, batch_sampler=mine, num_workers=options.workers)
        method.train()
        totals: dict[str, float] = {}
        steps = 0
        bar = progress(loader, len(loader), f"epoch {epoch + 1}/{schedule['epochs']}")
        for batch in bar:
            if options.max_steps_per_epoch is not None and steps >= options.max_steps_per_epoch:
                break
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
            with autocast(device, options.amp):
                losses = method.training_losses(inputs)
            total = losses["total"]
            if not torch.isfinite(total):
                raise BenchError(f"training diverged at epoch {epoch + 1}, step {steps + 1}: loss {float(total)}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            average_gradients(parameters, world)
            scaler.step(optimizer)
            scaler.update()
            steps += 1
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
        method.eval()
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr_factor": factor,
            "losses": {k: v / max(steps, 1) for k, v in totals.items()},
        }
        if select_split is not None:
            # features change every epoch, except those of a frozen backbone (cached without the weights)
            cache = FeatureCache(enabled=frozen_features is not None and options.use_cache)
            selection = EvalOptions(batch_size=ENCODE_BATCH, amp=options.amp, workers=options.workers)
            evaluation = evaluate_split(method, select_split, selection, cache, world)
            entry[options.select_on] = evaluation.retrieval.summary()
            score = entry[options.select_on]["t2i"]["R1"]
        else:
            score = None
        entry["seconds"] = time.perf_counter() - started
        record = {**record_base, "epoch": epoch + 1, "epochs": schedule["epochs"]}
        improved = score is None or score > best["R1"]  # --select-on last: every epoch replaces the one before
        if improved:
            best = {"epoch": epoch + 1, "R1": score if score is not None else -1.0}
        if world.is_main:
            method.save_checkpoint(folder / "last", record)
            if improved:
                linked_copy_dir(folder / "last", folder / "best")  # hard links: the weights are not written twice
            _save_resume(resume_file, method, optimizer, scaler, epoch + 1, best, _resumable(record_base, options))
            with open(log_file, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry, allow_nan=False) + "\n")
            _report(entry, options.select_on, best, schedule["epochs"])
        world.barrier()  # the next epoch (or the caller) sees this epoch's files
    if options.select_on == "last":
        best = {"epoch": best["epoch"], "R1": None}
    summary = {"method": method_name, "dataset": dataset_name, "best": best, "folder": str(folder), "argv": argv}
    if world.is_main:
        write_json_atomic(folder / "train.json", {**summary, "world_size": world.size})
    return folder / "best"


RESUME_KEYS = ("epoch", "best", "method", "optimizer", "scaler", "rng")


def _read_resume(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for damaged files
        raise BenchError(
            f"{path} is unreadable ({type(exc).__name__}); it is damaged or cut short: delete it to start over, "
            "or train into another --out"
        ) from exc
    missing = [k for k in RESUME_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise BenchError(f"{path} lacks {', '.join(missing)}; it is not a resume file of this version")
    return state


def _resumable(record: dict[str, Any], options: TrainOptions) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the data, the selection, the method's
    arguments, the seed, the precision and the schedule (its length aside: a run may be extended)."""
    schedule = {k: v for k, v in record["schedule"].items() if k != "epochs"}
    kept = ("dataset", "annotation_sha256", "selected_on", "seed", "max_steps_per_epoch", "method_arguments")
    return json.loads(json.dumps({**{k: record[k] for k in kept}, "schedule": schedule, "amp": options.amp}))


def _check_same_run(stored: dict[str, Any] | None, now: dict[str, Any], path: Path) -> None:
    """--resume continues the run it finds, or says what differs (one line) and stops."""
    if stored is None:  # a resume file of an earlier version records no options: nothing to compare
        return
    differ = [key for key in sorted(set(stored) | set(now)) if stored.get(key) != now.get(key)]
    if differ:
        shown = "; ".join(f"{key} was {stored.get(key)!r}, now {now.get(key)!r}" for key in differ[:3])
        raise BenchError(
            f"--resume: {path} continues a run started with other options ({shown}); resume with the same "
            "options, or train into another --out"
        )


def _save_resume(
    path: Path, method: Trainable, optimizer, scaler, epoch: int, best: dict[str, Any], run: dict[str, Any]
) -> None:
    state = {
        "run": run,
        "epoch": epoch,
        "best": best,
        "method": method.trained_modules().state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _report(entry: dict[str, Any], select_on: str, best: dict[str, Any], epochs: int) -> None:
    loss = entry["losses"].get("total", math.nan)
    line = f"epoch {entry['epoch']}/{epochs}  loss {loss:.3f}"
    if select_on in entry:
        line += f"  {select_on} t2i R@1 {entry[select_on]['t2i']['R1']:.2f} (best {best['R1']:.2f} @ {best['epoch']})"
    print(f"{line}  {entry['seconds']:.0f} s", file=sys.stderr)
