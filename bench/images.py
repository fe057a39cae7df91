"""Decoded images as 8-bit RGB, whatever the file stores."""

from __future__ import annotations

from typing import Any

#: 16-bit grayscale (PNG) opens in one of these modes; "I" is also what older Pillow gives such files
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
GRAYSCALE_MODES = ("1", "L", "LA", *SIXTEEN_BIT_MODES)


def to_rgb(image: Any) -> Any:
    """8-bit RGB. Pillow's own ``convert("RGB")`` clips 16-bit values at 255 (a mid-grey becomes white);
    they are scaled by 255 / 65535 instead."""
    if image.mode in SIXTEEN_BIT_MODES:
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")
