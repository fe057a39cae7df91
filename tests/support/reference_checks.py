"""Comparisons with the outputs of the authors' own code (``tests/fixtures/*_reference``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def relative_to_max(mine: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|mine - reference| / max|reference|``: the unit of every reference README's tolerance."""
    return float((mine.float() - reference).abs().max() / reference.abs().max())


def assert_resized_like_the_authors(preset, images: Path, reference: dict) -> None:
    """Each reference image, through the preset's resize (its first transform), equals the authors'
    uint8 pixels (``reference["pixels"]``, in the order of ``reference["image_files"]``)."""
    resize = preset.image_transform().transforms[0]
    for index, name in enumerate(reference["image_files"]):
        with Image.open(images / name) as image:
            pixels = torch.from_numpy(np.array(resize(image.convert("RGB")))).permute(2, 0, 1)
        assert torch.equal(pixels, reference["pixels"][index]), name
