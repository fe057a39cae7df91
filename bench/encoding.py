"""Batching, device placement, mixed precision and progress for encoders (the cache: ``tbps_bench.cache``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from tbps_bench.errors import BenchError
from tbps_bench.features import Features, check_features, concat_features, stored
from tbps_bench.images import to_rgb
from tbps_bench.methods import Method, as_features
from tbps_bench.splits import EvalSplit

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: the entry beside a method's text features that holds whether the tokenizer cut each caption (a
#: dotted name, which no method's feature names use)
TRUNCATION_FLAGS = "tbps_bench.truncated"


def progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, disable=not sys.stderr.isatty())


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP_DTYPES:
        raise BenchError(f"--amp must be one of bf16, fp16, none; got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[amp])


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, split: EvalSplit, transform: Callable[[Any], torch.Tensor] | None):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"pid": self.split.image_pids[index], "index": index}
        if self.transform is not None:
            item["pixels"] = read_image(self.split, index, self.transform)
        return item


def read_image(split: EvalSplit, index: int, transform: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """One image of the split as RGB, through the method's transform."""
    from PIL import Image

    path = split.image_root / split.image_paths[index]
    try:
        with Image.open(path) as image:
            return transform(to_rgb(image))
    except (OSError, Image.DecompressionBombError) as exc:
        raise BenchError(f"cannot read image {split.image_paths[index]} (index {index}): {exc}") from exc


def _batches(total: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, total, batch_size):
        yield slice(start, min(total, start + batch_size))


@torch.inference_mode()
def encode_images(
    method: Method,
    split: EvalSplit,
    batch_size: int,
    amp: str,
    workers: int = 0,
    rows: slice | None = None,
    storage: torch.dtype = torch.float32,
) -> Features:
    """Features of the split's images (or of images ``rows``), in batches of ``batch_size``."""
    transform = method.image_transform() if method.needs_pixels else None
    files: torch.utils.data.Dataset = _ImageFiles(split, transform)
    if rows is not None:
        files = torch.utils.data.Subset(files, range(rows.start, rows.stop))
    loader = torch.utils.data.DataLoader(
        files,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=method.device.type == "cuda",
    )
    parts: list[Features] = []
    who = f"method '{method.name}' encode_images"
    for batch in progress(loader, len(loader), f"{split.dataset} images"):
        batch = {
            k: v.to(method.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }
        with autocast(method.device, amp):
            features = as_features(method.encode_images(batch))
        check_features(features, len(batch["index"]), who)
        parts.append(stored(features, storage, who))
    return concat_features(parts)


@torch.inference_mode()
def encode_texts(
    method: Method,
    split: EvalSplit,
    batch_size: int,
    amp: str,
    rows: slice | None = None,
    storage: torch.dtype = torch.float32,
) -> Features:
    """Features of the split's captions (or of captions ``rows``), in batches of ``batch_size``; with
    ``TRUNCATION_FLAGS`` when the method's tokenizer reports which captions it cut."""
    parts: list[Features] = []
    who = f"method '{method.name}' encode_texts"
    span = rows or slice(0, len(split.captions))
    chunks = [slice(span.start + b.start, span.start + b.stop) for b in _batches(span.stop - span.start, batch_size)]
    for batch_rows in progress(chunks, len(chunks), f"{split.dataset} captions"):
        captions = split.captions[batch_rows]
        tokens = {k: v.to(method.device) for k, v in method.tokenize(captions).items()}
        batch = {
            "tokens": tokens,
            "captions": captions,
            "pid": split.caption_pids[batch_rows].to(method.device),
            "index": torch.arange(batch_rows.start, batch_rows.stop),
        }
        with autocast(method.device, amp):
            features = as_features(method.encode_texts(batch))
        check_features(features, len(captions), who)
        kept = stored(features, storage, who)
        if "truncated" in tokens:  # counted here, where the captions are tokenized, and cached with them
            kept[TRUNCATION_FLAGS] = tokens["truncated"].to("cpu", torch.bool).reshape(-1)
        parts.append(kept)
    return concat_features(parts)


def take_truncation_flags(features: Features) -> torch.Tensor | None:
    """Remove and return the per-caption truncation flags ``encode_texts`` keeps beside a method's
    text features (None: the method's tokenizer does not report truncation)."""
    return features.pop(TRUNCATION_FLAGS, None)
