"""The evaluation view of a dataset split that the harness consumes, whatever the adapter."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch


@dataclass
class EvalSplit:
    """Unique gallery images once each, and one query per caption with its person id.

    Text-to-image ranks every caption over ``image_paths``; image-to-text ranks every image over
    the captions. Positives share a raw person id.
    """

    dataset: str
    split: str
    image_root: Path
    image_paths: list[str]  # relative to image_root
    image_pids: torch.Tensor  # (I,) int64 raw person ids
    captions: list[str]
    caption_pids: torch.Tensor  # (T,) int64
    caption_image: torch.Tensor  # (T,) index of the caption's own image
    annotation_sha256: str
    image_sources: list[str] | None = None  # e.g. UFine3C's per-image source dataset
    limit: int | None = None
    #: a hash of the captions when ``annotation_sha256`` does not cover them (a search over an image
    #: folder with sentences typed at the command line): keys the cached text features
    caption_sha256: str | None = None

    def counts(self) -> dict[str, int]:
        return {
            "ids": int(torch.unique(self.image_pids).numel()),
            "images": len(self.image_paths),
            "captions": len(self.captions),
        }

    def image_manifest_sha256(self) -> str:
        """A hash of the image folder and every image file's path, size, modification time, inode and
        inode change time (ns).

        The feature cache keys on it: another folder never shares a key, and a file replaced in place
        (re-encoded, damaged, blacked out) has a new mtime, since writing a file sets it. A user can
        set the mtime back (``touch -d``), but not the change time, which the kernel sets on every
        write, rename, copy or permission change (so a ``chmod`` also re-encodes, harmlessly). Stat
        calls, not reads, so a cache hit stays cheap (measured in docs/benchmarks.md)."""
        digest = hashlib.sha256(str(self.image_root.resolve()).encode())
        for path in self.image_paths:
            try:
                stat = os.stat(self.image_root / path)
                key = f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\0{stat.st_ctime_ns}"
                digest.update(key.encode())
            except OSError:
                digest.update(f"\0{path}\0missing".encode())
        return digest.hexdigest()

    def limited(self, limit: int | None) -> EvalSplit:
        """The first ``limit`` images and their captions (a quick, partial run)."""
        if limit is None or limit >= len(self.image_paths):
            return self
        keep = self.caption_image < limit
        return replace(
            self,
            image_paths=self.image_paths[:limit],
            image_pids=self.image_pids[:limit],
            captions=[c for c, k in zip(self.captions, keep.tolist(), strict=True) if k],
            caption_pids=self.caption_pids[keep],
            caption_image=self.caption_image[keep],
            image_sources=self.image_sources[:limit] if self.image_sources else None,
            limit=limit,
        )

    def subset_images(self, keep_images: torch.Tensor, suffix: str) -> EvalSplit:
        """Images selected by a boolean mask and their captions (e.g. one UFine3C source)."""
        new_index = torch.cumsum(keep_images.to(torch.int64), 0) - 1
        keep_captions = keep_images[self.caption_image]
        indices = torch.nonzero(keep_images).reshape(-1).tolist()
        return replace(
            self,
            split=f"{self.split}/{suffix}",
            image_paths=[self.image_paths[i] for i in indices],
            image_pids=self.image_pids[keep_images],
            captions=[c for c, k in zip(self.captions, keep_captions.tolist(), strict=True) if k],
            caption_pids=self.caption_pids[keep_captions],
            caption_image=new_index[self.caption_image[keep_captions]],
            image_sources=[self.image_sources[i] for i in indices] if self.image_sources else None,
        )
