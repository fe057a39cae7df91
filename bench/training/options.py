"""What ``tbps-bench train`` is asked, as one record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbps_bench.options import Amp, SelectOn, parsed


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
    #: image-reading processes of the training batches, the train-feature encoding and the selection pass
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


def run_folder(options: TrainOptions, method_name: str, dataset: str) -> Path:
    return Path(options.out_dir) / method_name / dataset / f"seed{options.seed}"
