"""NAFS hyper-parameters; the defaults are those of the authors' released scripts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tbps_bench.errors import BenchError

TRUNKS = ("resnet18", "resnet34", "resnet50")


@dataclass
class NafsConfig:
    trunk: str = "resnet50"
    #: a torchvision state dict file, or "imagenet" (from the torch hub cache); None = random initialisation
    trunk_weights: str | None = None
    image_height: int = 384
    image_width: int = 128
    part2: int = 3
    part3: int = 2
    #: a BERT-family folder (config.json, vocab.txt, weights unless loading an official checkpoint)
    text_encoder: str | None = None
    #: load the text encoder's own weights from its folder (False when a checkpoint supplies them)
    text_encoder_pretrained: bool = True
    #: fine-tune the text encoder (the release does, at lr/10); False freezes it, and training then
    #: computes its outputs once per caption
    train_text_encoder: bool = True
    max_length: int = 100
    #: sub-sentences kept per caption (the released code keeps 2)
    sub_sentences: int = 2
    lambda_softmax: float = 20.0
    loss_weights: dict[str, float] = field(default_factory=lambda: {"cmpm": 1.0, "cmpc": 1.0, "cont": 0.1})

    def __post_init__(self) -> None:
        if self.trunk not in TRUNKS:
            raise BenchError(f"NAFS trunk must be one of {', '.join(TRUNKS)}; got {self.trunk!r}")
        if self.part2 < 1 or self.part3 < 1:
            raise BenchError(f"NAFS stripe counts must be >= 1; got part2={self.part2}, part3={self.part3}")
        if not 2 <= self.max_length <= 510:
            raise BenchError(f"NAFS max_length must be in 2..510; got {self.max_length}")
        unknown = set(self.loss_weights) - {"cmpm", "cmpc", "cont"}
        if unknown:
            raise BenchError(f"unknown NAFS loss weights {sorted(unknown)}; expected cmpm, cmpc, cont")

    @property
    def text_elements(self) -> int:
        """Global feature + sub-sentence [CLS] vectors + full-caption positions 1..max_length-2."""
        return 1 + self.sub_sentences + self.max_length - 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "NAFS config") -> NafsConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BenchError(f"{where}: unknown NAFS config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)
