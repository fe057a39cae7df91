"""The training items (one per caption) and each epoch's global batches."""

from __future__ import annotations

from typing import Any

import torch

from tbps_bench.encoding import read_image
from tbps_bench.splits import EvalSplit


class CaptionPairs(torch.utils.data.Dataset):
    """One training item per caption: its image, the caption and the contiguous identity label.

    An item's random augmentation is drawn from its own seed (run seed, epoch, caption index), so
    an item looks the same whichever process or loader worker reads it."""

    def __init__(self, split: EvalSplit, transform, labels: torch.Tensor, seed: int):
        self.split, self.transform, self.labels = split, transform, labels  # transform None: no pixels
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index = int(self.split.caption_image[index])
        item = {
            "caption": self.split.captions[index],
            "label": int(self.labels[index]),
            "caption_index": index,
            "image_index": image_index,
        }
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed also queues a CUDA seeding with a formatted
                # stack trace per call when CUDA is not initialised (a cost per item, and a growing queue)
                torch.random.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
                item["pixels"] = read_image(self.split, image_index, self.transform)
        return item


def global_batches(count: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """The epoch's batches of item indices: a permutation cut into ``batch_size`` pieces, the last
    dropped when incomplete (unless it is the only one)."""
    order = torch.randperm(count, generator=generator).tolist()
    stop = count if count <= batch_size else count - count % batch_size
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]
