"""Image files of unusual modes reach methods as the RGB a viewer shows."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tbps_bench.cli import main

from one_split import one_split_dataset


def test_a_16_bit_grey_image_stays_grey(tmp_path):
    from tbps_bench.images import to_rgb

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((16, 8), 117 * 257, dtype=np.uint16)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (16, 8, 3) and int(rgb.min()) == int(rgb.max()) == 117


def test_a_32_bit_integer_tiff_is_scaled_by_its_own_range(tmp_path, capsys):
    """Mode "I" holds 16-bit PNGs and 32-bit TIFFs alike: the file's tags say which, and a 32-bit
    mid-grey stays mid-grey (scaled as 16-bit it would be white)."""
    from tbps_bench.images import integer_depth, to_rgb

    path = tmp_path / "grey32.tif"
    Image.fromarray(np.full((16, 8), 117 * (2**31 - 1) // 255, dtype=np.int32)).save(path)  # Pillow writes int32
    with Image.open(path) as image:
        assert integer_depth(image) == (32, True)
        rgb = np.asarray(to_rgb(image))
    assert int(rgb.min()) == int(rgb.max()) == 117
    root = tmp_path / "CUHK-PEDES"
    one_split_dataset(root, {"a.tif": Image.open(path)})
    main(["data", "check", "-d", "cuhk-pedes", "--root", str(root)])
    assert "1 images are 32-bit integer grayscale" in capsys.readouterr().out
