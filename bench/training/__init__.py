"""The one training loop: every trainable method plugs in through the ``Trainable`` hooks.

It owns data order, optimisation, the learning-rate schedule, mixed precision, per-epoch
checkpoints with exact resume, and checkpoint selection on the validation split:

- ``options``: what ``tbps-bench train`` is asked;
- ``schedule``: the schedule's settings and the learning-rate factor of an epoch;
- ``data``: the training items and each epoch's global batches;
- ``resume``: the resume file, and starting, continuing or refusing a run folder;
- ``loop``: the loop itself, one function per step (epoch, selection, checkpoint).
"""

from tbps_bench.training.data import global_batches
from tbps_bench.training.loop import train
from tbps_bench.training.options import TrainOptions, run_folder
from tbps_bench.training.schedule import learning_rate_factor

__all__ = ["TrainOptions", "global_batches", "learning_rate_factor", "run_folder", "train"]
