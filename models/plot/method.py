"""``plot``: PLOT's released checkpoints, scored as its authors' evaluator does (text to image; image
to text reads the same matrix the other way)."""

from __future__ import annotations

from typing import Any

import torch

from tbps_bench.arguments import at_least
from tbps_bench.methods import Features, PairwiseMethod
from tbps_models.plot.model import ITERATIONS, PLOT_PRESET, PlotModel, load_plot
from tbps_models.released import require_checkpoint

#: the one feature each item keeps: the vector whose dot products are PLOT's scores
VECTOR = "plot_vector"


class PlotMethod(PairwiseMethod):
    """Options: ``trained_on``, ``iterations`` (slot-attention iterations, 5 as in the authors'
    scripts; not stored in the file). ``--checkpoint``: the authors' ``best.pth``.

    A pair's score depends on the two items alone, so the harness scores blocks (and shards them
    under torchrun); each block is one matrix product of the stored vectors."""

    name = "plot"
    smoke_arguments = ("--checkpoint", "{fixtures}/plot_reference/plot_checkpoint.pth.xz")

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        at_least("iterations", arguments.get("iterations", ITERATIONS), 1)

    def __init__(self, trained_on: str | None = None, iterations: int = ITERATIONS, **kwargs: Any):
        super().__init__(**kwargs)
        require_checkpoint(self, trained_on, "a PLOT best.pth")
        self.network.model = load_plot(self.checkpoint, iterations)

    @property
    def model(self) -> PlotModel:
        return self.network.model

    def arguments(self) -> dict[str, Any]:
        return {"trained_on": self.trained_on, "iterations": self.model.slot_attention.iterations}

    def encoder_arguments(self) -> dict[str, Any]:
        return {"iterations": self.model.slot_attention.iterations}

    def preprocessing(self) -> dict[str, Any]:
        return PLOT_PRESET.preprocessing(self.model.architecture.context_length)

    def image_transform(self):
        return PLOT_PRESET.image_transform()

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return PLOT_PRESET.tokenize(captions, self.model.architecture.context_length)

    def encode_images(self, batch) -> Features:
        return {VECTOR: self.model.image_vector(self.model.image_features(batch["pixels"]))}

    def encode_texts(self, batch) -> Features:
        return {VECTOR: self.model.text_vector(self.model.text_features(batch["tokens"]["ids"]))}

    def score_pairs(self, image_features: Features, text_features: Features) -> torch.Tensor:
        return image_features[VECTOR] @ text_features[VECTOR].T
