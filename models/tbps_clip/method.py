"""``tbps-clip``: TBPS-CLIP's released checkpoints (full and simplified), evaluated as its authors'
code does: cosine of the class-token and end-token embeddings."""

from __future__ import annotations

from typing import Any

import torch

from tbps_bench.methods import Method
from tbps_models.released import require_checkpoint
from tbps_models.tbps_clip.model import TBPS_CLIP_PRESET, load_tbps_clip


class TbpsClipMethod(Method):
    """Options: ``trained_on``. ``--checkpoint``: the authors' ``checkpoint_best.pth`` (either
    variant; which one is read from the file and recorded)."""

    name = "tbps-clip"
    smoke_arguments = ("--checkpoint", "{fixtures}/tbps_clip_reference/tbps_clip_checkpoint.pth")

    def __init__(self, trained_on: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        require_checkpoint(self, trained_on, "a TBPS-CLIP checkpoint_best.pth")
        loaded = load_tbps_clip(self.checkpoint)
        self.network.towers = loaded.towers
        self.architecture, self.variant = loaded.architecture, loaded.variant

    def arguments(self) -> dict[str, Any]:
        return {"trained_on": self.trained_on, "variant": self.variant}

    def encoder_arguments(self) -> dict[str, Any]:
        return {}

    def preprocessing(self) -> dict[str, Any]:
        return TBPS_CLIP_PRESET.preprocessing(self.architecture.context_length, self.architecture.image_size)

    def image_transform(self):
        return TBPS_CLIP_PRESET.image_transform(self.architecture.image_size)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return TBPS_CLIP_PRESET.tokenize(captions, self.architecture.context_length)

    def encode_images(self, batch) -> torch.Tensor:
        return self.network.towers.encode_images(batch["pixels"])

    def encode_texts(self, batch) -> torch.Tensor:
        return self.network.towers.encode_texts(batch["tokens"]["ids"])
