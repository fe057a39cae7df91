"""Decoded images as 8-bit RGB, whatever the file stores."""

from __future__ import annotations

from typing import Any

#: integer grayscale modes: 16-bit ("I;16*"; older Pillow opens a 16-bit PNG as "I") or 32-bit ("I")
INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
GRAYSCALE_MODES = ("1", "L", "LA", *INTEGER_MODES)
#: TIFF tags: bits per sample, sample format (1 unsigned, 2 signed)
_BITS_PER_SAMPLE, _SAMPLE_FORMAT = 258, 339


def integer_depth(image: Any) -> tuple[int, bool] | None:
    """(bits, signed) of an integer grayscale image, None for any other mode. Mode "I" holds 16-bit
    PNGs on older Pillow and 32-bit TIFFs: the file's own tags tell them apart."""
    if image.mode not in INTEGER_MODES:
        return None
    if image.mode != "I":
        return 16, False
    tags = getattr(image, "tag_v2", None)
    if tags is not None and _BITS_PER_SAMPLE in tags:
        bits = tags[_BITS_PER_SAMPLE]
        bits = int(bits[0] if isinstance(bits, tuple) else bits)
        sample_format = tags.get(_SAMPLE_FORMAT, 1)
        sample_format = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format)
        return bits, sample_format == 2
    return (16, False) if image.format == "PNG" else (32, True)


def to_rgb(image: Any) -> Any:
    """8-bit RGB. Pillow's own ``convert("RGB")`` clips integer values at 255 (a mid-grey becomes
    white); they are scaled by 255 over the largest value of their depth instead (negative values of a
    signed image are black)."""
    depth = integer_depth(image)
    if depth is not None:
        import numpy as np
        from PIL import Image

        bits, signed = depth
        largest = 2.0 ** (bits - 1 if signed else bits) - 1
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values * (255.0 / largest)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")
