"""``irra`` and ``rde``: released IRRA-family checkpoints, evaluated as their authors' code does."""

from __future__ import annotations

import sys
from typing import Any

import torch

from tbps_bench.methods import Method
from tbps_models.clip_reid.model import IRRA_PRESET, ClipReidModel, check_options, load_checkpoint
from tbps_models.released import require_checkpoint


class IrraMethod(Method):
    """Options: ``trained_on`` (the dataset the checkpoint was trained on: puts its rows in the
    in-domain or cross-domain table). ``--checkpoint``: the authors' ``best.pth``."""

    name = "irra"
    smoke_arguments = ("--checkpoint", "{fixtures}/irra_reference/irra_checkpoint.pth")
    family = "irra"

    def __init__(self, trained_on: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        require_checkpoint(self, trained_on, f"an {self.family.upper()}-format best.pth")
        self.network.model = load_checkpoint(self.checkpoint, self.family, **self._family_options())
        if self.model.ignored:
            ignored = ", ".join(f"{name} ({count})" for name, count in sorted(self.model.ignored.items()))
            print(f"note: {self.checkpoint}: ignored training-only entries {ignored}", file=sys.stderr)

    def _family_options(self) -> dict[str, Any]:
        return {}

    @property
    def model(self) -> ClipReidModel:
        return self.network.model

    def arguments(self) -> dict[str, Any]:
        return {"trained_on": self.trained_on}

    def encoder_arguments(self) -> dict[str, Any]:
        return {k: v for k, v in self.arguments().items() if k != "trained_on"}  # a label, not a feature

    def preprocessing(self) -> dict[str, Any]:
        return IRRA_PRESET.preprocessing(self.model.architecture.context_length)

    def image_transform(self):
        return IRRA_PRESET.image_transform()

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return IRRA_PRESET.tokenize(captions, self.model.architecture.context_length)

    def encode_images(self, batch) -> torch.Tensor:
        return self.model.embed_images(batch["pixels"])

    def encode_texts(self, batch) -> torch.Tensor:
        return self.model.embed_texts(batch["tokens"]["ids"])


class RdeMethod(IrraMethod):
    """Options: ``trained_on``, ``select_ratio`` (0.3, as RDE's scripts; not stored in the file),
    ``embedding`` (both | bge | tse: RDE's three reported rows)."""

    name = "rde"
    smoke_arguments = ("--checkpoint", "{fixtures}/rde_reference/rde_checkpoint.pth")
    family = "rde"

    @classmethod
    def check_arguments(cls, arguments: dict[str, Any]) -> None:
        check_options(arguments.get("select_ratio", 0.3), arguments.get("embedding", "both"))

    def __init__(self, select_ratio: float = 0.3, embedding: str = "both", **kwargs: Any):
        self._options = {"select_ratio": select_ratio, "embedding": embedding}
        super().__init__(**kwargs)

    def _family_options(self) -> dict[str, Any]:
        return self._options

    def arguments(self) -> dict[str, Any]:
        return {**super().arguments(), "embedding": self.model.embedding, "select_ratio": self.model.select_ratio}
