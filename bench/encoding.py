"""Batching, device placement, mixed precision, progress and the feature cache for encoders."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tbps_bench.errors import BenchError
from tbps_bench.features import Features, check_features, concat_features, stored
from tbps_bench.fileio import atomic_path, cache_root, sha256_json
from tbps_bench.images import to_rgb
from tbps_bench.methods import Method, as_features
from tbps_bench.splits import EvalSplit

FEATURE_CACHE_VERSION = 2
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    """Features of the split's captions (or of captions ``rows``), in batches of ``batch_size``."""
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
        parts.append(stored(features, storage, who))
    return concat_features(parts)


def count_truncated(method: Method, captions: list[str], batch_size: int) -> int | None:
    """How many captions the method's tokenizer cuts, when it reports that (a ``truncated`` flag)."""
    total, reported = 0, False
    for rows in _batches(len(captions), max(batch_size, 256)):
        flags = method.tokenize(captions[rows]).get("truncated")
        if flags is not None:
            reported = True
            total += int(flags.sum())
    return total if reported else None


class FeatureCache:
    """Encoded features keyed by method, checkpoint hash, annotation hash and preprocessing."""

    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = (root or cache_root()) / "features"
        self.enabled = enabled

    def path(self, key_fields: dict[str, Any]) -> Path:
        return self.root / f"{sha256_json({'v': FEATURE_CACHE_VERSION, **key_fields})[:40]}.safetensors"

    def get_or_compute(self, key_fields: dict[str, Any], compute: Callable[[], Features]) -> tuple[Features, bool]:
        path = self.path(key_fields)
        if self.enabled and path.is_file():
            try:
                return load_file(str(path)), True
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for damaged files
                note = f"note: feature cache entry {path} is unreadable ({exc}); removed, encoding again"
                print(note, file=sys.stderr)
                path.unlink(missing_ok=True)
        features = compute()
        if self.enabled:
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
        return features, False
