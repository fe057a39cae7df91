"""A dataset folder in the toy-pedes layout with only a test split, from given images."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def one_split_dataset(root: Path, images: dict[str, Image.Image]) -> None:
    (root / "imgs").mkdir(parents=True)
    records = []
    for index, (name, image) in enumerate(images.items()):
        image.save(root / "imgs" / name)
        records.append({"split": "test", "id": index, "file_path": name, "captions": [f"a person {index}"]})
    (root / "reid_raw.json").write_text(json.dumps(records))
