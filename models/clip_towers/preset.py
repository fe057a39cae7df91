"""What the CLIP-based methods differ in, as data beside each method (as timm keeps a model's
pretrained configuration next to it): input size, resize, normalisation, the caption rule before the
BPE, how the patch stride is found and how many text blocks run. The towers, the key mapping and the
tokenizer are the same code for every one of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tbps_models.clip_towers.backbone import CLIP_MEAN, CLIP_STD
from tbps_models.clip_towers.tokenizer import tokenize
from tbps_models.transforms import IMAGENET_MEAN, IMAGENET_STD, person_image_transform

NORMALIZATION = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


@dataclass(frozen=True)
class CaptionCleaning:
    """A method's caption rule applied before CLIP's BPE: ``function(caption, context_length)``."""

    name: str
    function: Callable[[str, int], str]


@dataclass(frozen=True)
class ClipPreset:
    """One CLIP-based method's evaluation, as data.

    ``stride_is_patch``: the method's code fixes the patch stride to the patch size (otherwise it is
    read off the stored position table). ``text_blocks_dropped``: the last text blocks that are stored
    but not run (PLOT builds its text tower without its last block)."""

    image_size: tuple[int, int]  # height x width
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    normalize: Literal["clip", "imagenet"] = "clip"
    caption_cleaning: CaptionCleaning | None = None
    stride_is_patch: bool = False
    text_blocks_dropped: int = 0

    def image_transform(self, image_size: tuple[int, int] | None = None):
        mean, std = NORMALIZATION[self.normalize]
        return person_image_transform(image_size or self.image_size, mean, std, interpolation=self.interpolation)

    def tokenize(self, captions: list[str], context: int) -> dict[str, torch.Tensor]:
        if self.caption_cleaning is not None:
            captions = [self.caption_cleaning.function(caption, context) for caption in captions]
        return tokenize(captions, context)

    def preprocessing(self, context: int, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
        """What the result file and the feature cache record of the inputs."""
        record = {
            "image_size": list(image_size or self.image_size),
            "resize": self.interpolation,
            "normalize": self.normalize,
            "tokenizer": "clip-bpe-16e6",
            "context_length": context,
        }
        if self.caption_cleaning is not None:
            record["caption_cleaning"] = self.caption_cleaning.name
        return record
