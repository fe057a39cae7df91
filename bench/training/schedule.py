"""A training schedule: its settings (the method's defaults, then the user's) and its learning rate."""

from __future__ import annotations

from typing import Any

from tbps_bench.errors import BenchError

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


def merged_schedule(defaults: dict[str, Any], epochs: int | None) -> dict[str, Any]:
    """The method's schedule with the user's epoch count, checked."""
    schedule = dict(defaults)
    if epochs is not None:
        schedule["epochs"] = epochs
    unknown = sorted(set(schedule) - SCHEDULE_KEYS)
    if unknown:
        raise BenchError(f"unknown training settings {unknown}; known: {sorted(SCHEDULE_KEYS)}")
    if schedule["epochs"] < 1 or schedule["batch_size"] < 2:
        raise BenchError(f"training needs epochs >= 1 and batch_size >= 2; got {schedule}")
    return schedule


def learning_rate_factor(epoch: int, schedule: dict[str, Any]) -> float:
    """Linear warm-up from ``warmup_factor``, then x``gamma`` at each milestone (epochs from 0)."""
    if epoch < schedule["warmup_epochs"]:
        fraction = epoch / schedule["warmup_epochs"]
        return schedule["warmup_factor"] + (1.0 - schedule["warmup_factor"]) * fraction
    return schedule["gamma"] ** sum(epoch >= m for m in schedule["milestones"])
