"""What the ALBEF-family methods (RaSa, MARS, APTM) share as tbps-bench methods: a released
checkpoint, a ``trained_on`` label, the BERT vocabulary, and the shortlist protocol's hooks."""

from __future__ import annotations

import sys
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.methods import ShortlistMethod
from tbps_models.albef.model import CrossEncoder
from tbps_models.albef.tokenizer import CaptionTokenizer
from tbps_models.released import require_checkpoint


def optional_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BenchError(f"{name} must be an integer; got {value!r}")
    return value


class CrossEncoderMethod(ShortlistMethod):
    """Subclasses load ``self.network.model`` (a ``CrossEncoder``) and ``self._tokenizer`` in their
    ``__init__`` after calling this one."""

    second_stage = "itm"
    _tokenizer: CaptionTokenizer

    def __init__(self, trained_on: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        require_checkpoint(self, trained_on, "the authors' checkpoint.pth")

    def report(self, notes: list[str], ignored: dict[str, int]) -> None:
        """What loading decided or left out, one note each."""
        for note in notes:
            print(f"note: {self.checkpoint}: {note}", file=sys.stderr)
        if ignored:
            names = ", ".join(sorted(ignored))
            print(
                f"note: {self.checkpoint}: ignored {sum(ignored.values())} training-only entries ({names})",
                file=sys.stderr,
            )

    @property
    def model(self) -> CrossEncoder:
        return self.network.model

    def arguments(self) -> dict[str, Any]:
        return {**super().arguments(), "trained_on": self.trained_on}

    def encoder_arguments(self) -> dict[str, Any]:
        return {k: v for k, v in self.arguments().items() if k != "trained_on"}  # a label, not a feature

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self._tokenizer(captions)

    def encode_images(self, batch) -> dict[str, torch.Tensor]:
        return self.model.image_features(batch["pixels"])

    def encode_texts(self, batch) -> dict[str, torch.Tensor]:
        return self.model.text_features(batch["tokens"]["ids"], batch["tokens"]["mask"])

    def score_pairs(self, images, texts, pair_image) -> torch.Tensor:
        return self.model.match(images["tokens"], texts, pair_image)
