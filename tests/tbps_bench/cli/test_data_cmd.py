"""``tbps-bench data check``: every image decoded, every problem named."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tbps_bench.cli import main

from one_split import one_split_dataset


def test_data_check_decodes_every_image(tmp_path, capsys):
    root = tmp_path / "CUHK-PEDES"
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    grey16 = Image.fromarray(np.full((16, 8), 117 * 257, dtype=np.uint16))
    one_split_dataset(root, {"a.jpg": photo, "b.jpg": photo, "c.png": grey16})
    (root / "imgs" / "b.jpg").write_bytes((root / "imgs" / "b.jpg").read_bytes()[:1500])  # truncated JPEG
    assert main(["data", "check", "-d", "cuhk-pedes", "--root", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "error: 1 images are undecodable or truncated: b.jpg" in out
    assert "1 images are 16-bit integer grayscale (scaled to 8 bits by their depth's range" in out
    main(["data", "check", "-d", "cuhk-pedes", "--root", str(root), "--quick"])
    assert "undecodable" not in capsys.readouterr().out  # headers alone cannot see a cut file
