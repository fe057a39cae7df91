"""The resume file: what a run writes after every epoch, and reads back to continue exactly."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tbps_bench.checkpoints import load_state
from tbps_bench.distributed import World
from tbps_bench.errors import BenchError
from tbps_bench.fileio import atomic_path
from tbps_bench.methods import Trainable
from tbps_bench.training.options import TrainOptions

RESUME_KEYS = ("epoch", "best", "method", "optimizer", "scaler", "rng")

#: what a run leaves in its folder besides ``resume.pt``
RUN_FILES = ("best", "last", "log.jsonl")


@dataclass
class Progress:
    """Where a run stands: the epochs done and the best one so far (by validation t2i R@1)."""

    epochs_done: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": None, "R1": -1.0})


def start_or_resume(
    folder: Path,
    method: Trainable,
    method_name: str,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    run: dict[str, Any],
    options: TrainOptions,
    world: World,
) -> Progress:
    """With ``--resume``: the state of ``folder/resume.pt`` restored (weights, optimizer, scaler,
    random generators) after checking that it continues a run of the same options. Without it: a
    fresh start, refused where the folder already holds a run (unless ``--overwrite``)."""
    resume_file = folder / "resume.pt"
    if options.resume:
        if not resume_file.is_file():
            raise BenchError(f"--resume: no {resume_file} to resume from; start without --resume")
        state = read_resume(resume_file)
        check_same_run(state.get("run"), run, resume_file)
        load_state(method.trained_modules(), state["method"], str(resume_file), method_name)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise BenchError(f"{resume_file}: the optimizer state does not fit this run ({exc})") from exc
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        print(f"resumed {folder} at epoch {int(state['epoch'])}", file=sys.stderr)
        return Progress(int(state["epoch"]), state["best"])
    if resume_file.exists():
        raise BenchError(f"{folder} already holds a training run; pass --resume to continue it or use another --out")
    if not options.overwrite and any((folder / name).exists() for name in RUN_FILES):
        found = ", ".join(name for name in RUN_FILES if (folder / name).exists())
        raise BenchError(
            f"{folder} holds a finished or partial run ({found}) without its resume file; pass another --out, "
            "or --overwrite to replace it"
        )
    if options.overwrite and world.is_main:
        (folder / "log.jsonl").unlink(missing_ok=True)  # best/ and last/ are replaced whole by the run
    return Progress()


def read_resume(path: Path) -> dict[str, Any]:
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


def resumable(record: dict[str, Any], options: TrainOptions) -> dict[str, Any]:
    """What a resumed run must share with the run it continues: the data, the selection, the method's
    arguments, the seed, the precision and the schedule (its length aside: a run may be extended)."""
    schedule = {k: v for k, v in record["schedule"].items() if k != "epochs"}
    kept = ("dataset", "annotation_sha256", "selected_on", "seed", "max_steps_per_epoch", "method_arguments")
    return json.loads(json.dumps({**{k: record[k] for k in kept}, "schedule": schedule, "amp": options.amp}))


def check_same_run(stored: dict[str, Any] | None, now: dict[str, Any], path: Path) -> None:
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


def save_resume(path: Path, method: Trainable, optimizer, scaler, progress: Progress, run: dict[str, Any]) -> None:
    state = {
        "run": run,
        "epoch": progress.epochs_done,
        "best": progress.best,
        "method": method.trained_modules().state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
